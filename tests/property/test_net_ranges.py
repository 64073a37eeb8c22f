"""Range replication among three nodes, messages delivered in random order: a writer, a sparse
relay holding random stretches, and an eager replica with a session to each (sharing claims).
Whatever the interleaving, the replica ends with every block, verified, and nothing claimed.
"""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from autobase_py import crypto
from autobase_py.log import Log
from autobase_py.net.replication import Claims, LogSession
from autobase_py.storage import Storage

WRITER = crypto.key_pair(b"p" * 32)


class Wire:
    """Sessions joined in pairs; each direction is a FIFO queue (a channel keeps order)."""

    def __init__(self) -> None:
        self.queues: dict[tuple[int, int], deque[bytes]] = {}
        self.sessions: list[LogSession] = []
        self.peer: dict[int, int] = {}

    def link(self, a: LogSession, b: LogSession) -> None:
        for s in (a, b):
            self.sessions.append(s)
        ia, ib = len(self.sessions) - 2, len(self.sessions) - 1
        self.peer[ia], self.peer[ib] = ib, ia
        self.queues[(ia, ib)], self.queues[(ib, ia)] = deque(), deque()

    def send(self, src: int, messages: list[bytes]) -> None:
        self.queues[(src, self.peer[src])].extend(messages)

    def deliver(self, key: tuple[int, int]) -> None:
        dst = key[1]
        session = self.sessions[dst]
        out, kick = session.receive(self.queues[key].popleft())
        self.send(dst, out)
        if kick:  # what the Replicator does: the log's other sessions look again
            for i, other in enumerate(self.sessions):
                if other is not session and other.log is session.log:
                    self.send(i, other.local_changed())

    def busy(self) -> list[tuple[int, int]]:
        return [key for key, queue in self.queues.items() if queue]


@settings(max_examples=60)
@given(
    length=st.integers(1, 150),
    held=st.lists(st.tuples(st.integers(0, 149), st.integers(1, 40)), max_size=4),
    range_size=st.integers(1, 48),
    window=st.integers(1, 6),
    order=st.lists(st.integers(0, 7), max_size=400),
)
def test_replica_gets_every_block_whatever_the_interleaving(
    length: int,
    held: list[tuple[int, int]],
    range_size: int,
    window: int,
    order: list[int],
) -> None:
    writer = Log.create(Storage.open_memory(), WRITER)
    writer.append([b"block %d" % i for i in range(length)])
    relay = Log.replica(Storage.open_memory(), writer.key)
    replica = Log.replica(Storage.open_memory(), writer.key)
    wire = Wire()
    relay_claims, replica_claims = Claims(), Claims()
    relay_up = LogSession(relay, relay_claims, eager=False, range_size=range_size)
    wire.link(LogSession(writer), relay_up)
    wire.link(LogSession(relay, relay_claims), LogSession(
        replica, replica_claims, window=window, range_size=range_size
    ))
    wire.link(LogSession(writer), LogSession(
        replica, replica_claims, window=window, range_size=range_size
    ))
    for i, session in enumerate(wire.sessions):
        wire.send(i, session.start())
    for start, count in held:
        wire.send(1, relay_up.want(start, start + count))
    for pick in order:
        busy = wire.busy()
        if not busy:
            break
        wire.deliver(busy[pick % len(busy)])
    for _ in range(100_000):
        busy = wire.busy()
        if not busy:
            break
        wire.deliver(busy[0])
    assert not wire.busy()
    assert replica.length == length
    assert [replica.get(i) for i in range(length)] == [b"block %d" % i for i in range(length)]
    assert replica_claims.blocks == set()
