"""Dead-peer detection, sans-IO: the core's liveness ticks and the mux's keepalive pings."""

from __future__ import annotations

import math

import pytest
from test_net_mux import deliver  # the same frame shuttle between two muxes

from autobase_py import crypto
from autobase_py.errors import LocalError, ProtocolError, TimedOutError
from autobase_py.net.connection import (
    Established,
    Liveness,
    SecureConnection,
    State,
)
from autobase_py.net.mux import ChannelRequested, Half, Mux, encode_open

A_KEYS, B_KEYS = crypto.key_pair(b"a" * 32), crypto.key_pair(b"b" * 32)
TICK = 2.5  # with the settings of ``established``: min(5 s / 2, 20 s / 4)


def established(
    keepalive_interval: float | None = 5.0, idle_timeout: float | None = 20.0
) -> tuple[SecureConnection, SecureConnection]:
    """Two cores after the handshake (and both headers), nothing else sent."""
    liveness = Liveness(keepalive_interval, idle_timeout)
    a = SecureConnection(A_KEYS, initiator=True, now=0.0, liveness=liveness)
    b = SecureConnection(B_KEYS, initiator=False, now=0.0, liveness=liveness)
    for _ in range(4):
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if data:
                for event in dst.receive_data(data):
                    assert isinstance(event, Established)
    assert a.state is State.OPEN and b.state is State.OPEN
    return a, b


def test_settings_are_checked() -> None:
    for interval, idle in [(None, None), (5.0, None), (None, 20.0), (5.0, 10.0)]:
        Liveness(interval, idle)
    bad = {
        (5.0, 9.9): "idle_timeout (9.9 s) must be at least twice keepalive_interval (5 s)",
        (0.0, 20.0): "keepalive_interval must be positive or None, not 0.0",
        (5.0, -1.0): "idle_timeout must be positive or None, not -1.0",
        (-5.0, None): "keepalive_interval must be positive or None, not -5.0",
    }
    for (interval, idle), message in bad.items():
        with pytest.raises(LocalError) as info:
            Liveness(interval, idle)
        assert str(info.value) == f"LOCAL_ERROR: {message}"


def test_off_by_default_in_the_core() -> None:
    assert SecureConnection(A_KEYS, initiator=True, now=0.0).tick is None
    a, _ = established(None, None)
    assert a.tick is None and a.deadline is None
    assert a.handle_timer(1e9) is False  # nothing is due, nothing times out


def test_deadlines_tick_after_the_handshake() -> None:
    a = SecureConnection(A_KEYS, initiator=True, now=100.0, liveness=Liveness(5, 20))
    assert a.deadline == 110.0  # the handshake's own deadline first
    a, _ = established()
    assert a.tick == TICK  # min(interval / 2, idle / 4)
    assert a.deadline == -math.inf  # the first tick is due at once: it starts the clock
    assert a.handle_timer(50.0) is False
    assert a.deadline == 52.5


def test_a_silent_peer_times_out_after_the_idle_timeout() -> None:
    a, _ = established()
    now = 0.0
    a.handle_timer(now)
    a.data_to_send()  # nothing: our keepalives are not what keeps the peer alive
    with pytest.raises(TimedOutError, match="peer silent for 20 s"):
        while True:
            assert a.deadline is not None
            now = a.deadline
            assert now < 20.0 + TICK + 1e-9, "not detected within one tick of the timeout"
            a.handle_timer(now)
    assert now >= 20.0
    assert a.state is State.FAILED and a.deadline is None
    with pytest.raises(ProtocolError):
        a.receive_data(b"x")


def test_anything_received_keeps_the_peer_alive() -> None:
    a, b = established()
    a.handle_timer(0.0)
    now = 0.0
    for _ in range(40):  # 100 seconds, the peer sending one message every 15 s
        now += TICK
        if now % 15.0 < TICK:
            b.send(b"x")
            a.receive_data(b.data_to_send())
        a.handle_timer(now)
    assert a.state is State.OPEN


def test_a_keepalive_is_due_when_we_sent_nothing_for_the_interval() -> None:
    a, _ = established()
    a.handle_timer(0.0)
    due = []
    now = 0.0
    for _ in range(8):  # 20 s, the peer answering every keepalive
        now += TICK
        a.received_count += 1  # the peer's answers (the count is all the core looks at)
        if a.handle_timer(now):
            due.append(now)
            a.send(b"ping")
            assert a.data_to_send()
    assert due == [5.0, 12.5, 20.0]  # at 5 s idle, noticed the next tick after each send
    # something else we send postpones the keepalive
    a.send(b"data")
    a.data_to_send()
    a.received_count += 1
    assert a.handle_timer(now + TICK) is False
    a.received_count += 1
    assert a.handle_timer(now + 2 * TICK) is False  # the write is dated to the last tick


def test_a_late_tick_does_not_blame_the_peer() -> None:
    """Our own process was away for a minute: the peer's bytes may be waiting unread."""
    a, _ = established()
    a.handle_timer(0.0)
    a.handle_timer(60.0)  # 57.5 s late: the silence window moves on by that much
    assert a.state is State.OPEN
    with pytest.raises(TimedOutError):
        now = 60.0
        while now < 60.0 + 25.0:
            now += TICK
            a.handle_timer(now)
    # the 2.5 s until the tick was due count as silence, the 57.5 s of lateness do not
    present = TICK + (now - 60.0)
    assert 20.0 <= present <= 20.0 + TICK


def test_liveness_stops_once_a_side_closes() -> None:
    a, b = established()
    a.handle_timer(0.0)
    a.close()
    assert a.deadline is None and a.handle_timer(1e6) is False
    b.handle_timer(0.0)
    b.receive_data(a.data_to_send())  # the FINAL
    assert b.state is State.REMOTE_CLOSED
    assert b.deadline is None and b.handle_timer(1e6) is False


# -- the mux's pings -------------------------------------------------------------------------


def test_a_ping_is_answered_and_forgotten_on_both_sides() -> None:
    a, b = Mux(initiator=True), Mux(initiator=False)
    assert a.ping() is True
    assert a.ping() is False  # unanswered: no second one
    assert deliver(a, b) == []  # OPEN: no event; the mux answers REJECT itself
    assert b.keys() == [("", b"i")]
    assert deliver(b, a) == []  # REJECT: no event; a answers CLOSE
    assert a.keys() == []
    assert deliver(a, b) == []
    assert b.keys() == [] and a.frames_to_send() == [] and b.frames_to_send() == []
    assert a.ping() is True  # the next one may go


@pytest.mark.parametrize("b_initiator", [False, True], ids=["crossing", "pairing"])
def test_crossing_pings_settle(b_initiator: bool) -> None:
    """Pings sent at once cross (each side has its own name) or, with both sides using one
    name (a peer built with the other role), pair: either way both sides settle."""
    a, b = Mux(initiator=True), Mux(initiator=b_initiator)
    assert a.ping() and b.ping()
    for _ in range(3):
        assert deliver(a, b) == [] and deliver(b, a) == []
    assert a.keys() == [] and b.keys() == []


def test_a_ping_to_a_peer_without_keepalives_is_refused_like_any_unknown_protocol() -> None:
    """Interop with wire version 3 and older: such a peer reports a channel request for a
    protocol it does not serve and rejects it (connection_trio does exactly that): the
    ping is answered and the connection lives."""
    a, old = Mux(initiator=True), Mux(initiator=False)
    old.keepalive_protocol = None
    a.ping()
    events = deliver(a, old)
    assert events == [ChannelRequested(("", b"i"), b"")]
    old.reject(("", b"i"))
    assert deliver(old, a) == []
    assert deliver(a, old) == []
    assert a.keys() == [] and old.keys() == []


def test_pings_do_not_count_towards_the_channel_limit() -> None:
    a, b = Mux(initiator=True), Mux(initiator=False, max_channels=1)
    a.open(("log", b"x"))
    deliver(a, b)
    b.open(("log", b"x"))
    deliver(b, a)
    assert b.state(("log", b"x")) == (Half.OPEN, Half.OPEN)
    a.ping()
    assert deliver(a, b) == []  # no ProtocolError for a second "channel"
    deliver(b, a)
    deliver(a, b)
    assert b.keys() == [("log", b"x")]


def test_only_the_two_ping_names_are_exempt_from_the_channel_limit() -> None:
    """A peer cannot pile up records past the limit by opening other names of the keepalive
    protocol and never closing them: they are refused, and count."""
    b = Mux(initiator=False, max_channels=2)
    assert b.receive_frame(encode_open(0, ("", b"x"), b"")) == []
    assert b.receive_frame(encode_open(1, ("", b"y"), b"")) == []
    assert len(b.frames_to_send()) == 2  # two REJECTs
    with pytest.raises(ProtocolError, match="more than 2 channels"):
        b.receive_frame(encode_open(2, ("", b"z"), b""))
    c = Mux(initiator=False, max_channels=2)
    c.receive_frame(encode_open(0, ("", b"x"), b""))
    c.receive_frame(encode_open(1, ("", b"y"), b""))
    assert c.receive_frame(encode_open(2, ("", b"i"), b"")) == []  # a ping still gets in


def test_the_keepalive_protocol_is_reserved() -> None:
    with pytest.raises(LocalError):
        Mux().open(("", b"i"))
