"""Two muxes talking through ordered, delayed queues, driven by hypothesis.

Honest peers never trigger a ProtocolError, whatever the interleaving of opens, closes,
rejects and messages; messages arrive in order and only on open channels; and once the
queues drain, both sides agree on every channel's state (each one's local half is the
other's remote half), and fully closed names are forgotten on both sides.
"""

from __future__ import annotations

from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from autobase_py.errors import ChannelClosedError, LocalError
from autobase_py.net.mux import (
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    ChannelRequested,
    Half,
    Key,
    Mux,
)

NAMES: list[Key] = [("rpc", b""), ("log", b"a"), ("log", b"b")]


class TwoMuxes(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.mux = [Mux(), Mux()]
        self.wire: list[deque[bytes]] = [deque(), deque()]  # wire[i]: frames from i to 1-i
        self.sent: dict[tuple[int, Key], list[bytes]] = {}
        self.received: dict[tuple[int, Key], list[bytes]] = {}
        self.counter = 0
        self.accept = [True, True]

    def _collect(self, side: int) -> None:
        self.wire[side].extend(self.mux[side].frames_to_send())

    @rule(side=st.integers(0, 1), key=st.sampled_from(NAMES))
    def open(self, side: int, key: Key) -> None:
        try:
            self.mux[side].open(key)
        except LocalError:
            assert self.mux[side].state(key)[0] is not Half.NONE
        self._collect(side)

    @rule(side=st.integers(0, 1), key=st.sampled_from(NAMES))
    def close(self, side: int, key: Key) -> None:
        self.mux[side].close(key)
        self._collect(side)

    @rule(side=st.integers(0, 1), accept=st.booleans())
    def policy(self, side: int, accept: bool) -> None:
        self.accept[side] = accept

    @rule(side=st.integers(0, 1), key=st.sampled_from(NAMES))
    def send(self, side: int, key: Key) -> None:
        self.counter += 1
        data = b"%d" % self.counter
        try:
            self.mux[side].send(key, data)
        except (LocalError, ChannelClosedError):
            assert not self.mux[side].is_open(key)
            return
        # A message is owed to the peer unless the peer closes before reading it.
        self.sent.setdefault((side, key), []).append(data)
        self._collect(side)

    @rule(side=st.integers(0, 1), count=st.integers(1, 4))
    def deliver(self, side: int, count: int) -> None:
        peer = 1 - side
        for _ in range(count):
            if not self.wire[side]:
                return
            frame = self.wire[side].popleft()
            for event in self.mux[peer].receive_frame(frame):  # never a ProtocolError
                if isinstance(event, ChannelRequested):
                    if self.accept[peer]:
                        self.mux[peer].open(event.key)
                    else:
                        self.mux[peer].reject(event.key)
                elif isinstance(event, ChannelMessage):
                    assert self.mux[peer].is_open(event.key)
                    self.received.setdefault((side, event.key), []).append(event.data)
                elif isinstance(event, (ChannelOpened, ChannelClosed)):
                    pass
            self._collect(peer)

    @invariant()
    def messages_in_order(self) -> None:
        for where, got in self.received.items():
            sent = self.sent.get(where, [])
            positions = [sent.index(m) for m in got]
            assert positions == sorted(positions)

    def teardown(self) -> None:
        # Drain everything: both sides must agree, with no protocol error on the way.
        for _ in range(50):
            if not (self.wire[0] or self.wire[1]):
                break
            self.deliver(0, 100)
            self.deliver(1, 100)
        assert not (self.wire[0] or self.wire[1])
        for key in NAMES:
            mine, theirs = self.mux[0].state(key), self.mux[1].state(key)
            assert mine == (theirs[1], theirs[0]), (key, mine, theirs)
        for key in NAMES:
            self.mux[0].close(key)
            self.mux[1].close(key)
        self._collect(0)
        self._collect(1)
        for _ in range(10):
            self.deliver(0, 100)
            self.deliver(1, 100)
        assert self.mux[0].keys() == [] and self.mux[1].keys() == []


TwoMuxes.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_two_muxes = TwoMuxes.TestCase
