"""The channel mux, driven without sockets: the state table, frames and every edge."""

from __future__ import annotations

import itertools

import pytest

from autobase_py.errors import ChannelClosedError, LocalError, ProtocolError
from autobase_py.net import mux as muxmod
from autobase_py.net.mux import (
    TRANSITIONS,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    ChannelRequested,
    Half,
    Mux,
    MuxEvent,
    decode_frame,
    encode_open,
    encode_simple,
)

RPC = ("rpc", b"")
LOG = ("log", b"\x01" * 32)


def deliver(src: Mux, dst: Mux) -> list[MuxEvent]:
    events: list[MuxEvent] = []
    for frame in src.frames_to_send():
        events += dst.receive_frame(frame)
    return events


def test_open_accept_message_close() -> None:
    a, b = Mux(), Mux()
    assert a.open(RPC, b"hello") == []
    assert deliver(a, b) == [ChannelRequested(RPC, b"hello")]
    assert b.open(RPC, b"welcome") == [ChannelOpened(RPC, b"hello")]
    assert deliver(b, a) == [ChannelOpened(RPC, b"welcome")]
    assert a.is_open(RPC) and b.is_open(RPC)
    a.send(RPC, b"1")
    a.send(RPC, b"")
    b.send(RPC, b"2")
    assert deliver(a, b) == [ChannelMessage(RPC, b"1"), ChannelMessage(RPC, b"")]
    assert deliver(b, a) == [ChannelMessage(RPC, b"2")]
    a.close(RPC)
    assert a.state(RPC) == (Half.CLOSED, Half.OPEN)
    assert deliver(a, b) == [ChannelClosed(RPC)]
    assert b.keys() == []
    assert deliver(b, a) == []
    assert a.keys() == []
    with pytest.raises(ChannelClosedError):
        a.send(RPC, b"x")


def test_simultaneous_open_pairs_by_name() -> None:
    a, b = Mux(), Mux()
    a.open(LOG, b"a")
    b.open(LOG, b"b")
    assert deliver(a, b) == [ChannelOpened(LOG, b"a")]
    assert deliver(b, a) == [ChannelOpened(LOG, b"b")]
    # Both close at once: each close answers the other, both forget the name.
    a.close(LOG)
    b.close(LOG)
    assert deliver(a, b) == []
    assert deliver(b, a) == []
    assert a.keys() == b.keys() == []


def test_reject_and_withdraw() -> None:
    a, b = Mux(), Mux()
    a.open(RPC)
    deliver(a, b)
    b.reject(RPC)
    assert deliver(b, a) == [ChannelClosed(RPC)]
    assert deliver(a, b) == []
    assert a.keys() == b.keys() == []
    # Open then close before the peer answers: the peer acks with a reject.
    a.open(RPC)
    a.close(RPC)
    assert deliver(a, b) == [ChannelRequested(RPC, b""), ChannelClosed(RPC)]
    assert deliver(b, a) == []
    assert a.keys() == b.keys() == []


def test_message_crossing_our_close_is_dropped_and_name_can_be_reused() -> None:
    a, b = Mux(), Mux()
    a.open(RPC)
    deliver(a, b)
    b.open(RPC)
    deliver(b, a)
    b.send(RPC, b"in flight")
    a.close(RPC)
    assert deliver(b, a) == []  # dropped: we closed
    assert deliver(a, b) == [ChannelClosed(RPC)]
    deliver(b, a)
    a.open(RPC, b"again")
    assert deliver(a, b) == [ChannelRequested(RPC, b"again")]


def test_close_of_unknown_or_closed_channel_is_a_no_op_and_reopen_while_closing_is_misuse() -> None:
    a, b = Mux(), Mux()
    a.close(RPC)
    a.open(RPC)
    deliver(a, b)
    b.open(RPC)
    deliver(b, a)
    a.close(RPC)
    a.close(RPC)
    with pytest.raises(LocalError):
        a.open(RPC)  # the peer has not answered our close yet
    with pytest.raises(LocalError):
        b.open(RPC)  # already open
    with pytest.raises(LocalError):
        a.reject(LOG)


def test_send_before_the_peer_opened_is_misuse() -> None:
    a = Mux()
    a.open(RPC)
    with pytest.raises(LocalError):
        a.send(RPC, b"x")
    with pytest.raises(ChannelClosedError):
        a.send(LOG, b"x")


def test_protocol_violations() -> None:
    a, b = Mux(), Mux()
    a.open(RPC)
    frames = a.frames_to_send()
    b.receive_frame(frames[0])
    with pytest.raises(ProtocolError, match="reused"):
        b.receive_frame(frames[0])
    with pytest.raises(ProtocolError, match="twice"):
        b.receive_frame(encode_open(7, RPC, b""))
    with pytest.raises(ProtocolError, match="unknown channel"):
        b.receive_frame(encode_simple(muxmod.MESSAGE, 99, b"x"))
    with pytest.raises(ProtocolError, match="unknown channel"):
        b.receive_frame(encode_simple(muxmod.CLOSE, 99))
    with pytest.raises(ProtocolError, match="rejected unknown"):
        b.receive_frame(encode_simple(muxmod.REJECT, 99))
    with pytest.raises(ProtocolError, match="message"):
        b.receive_frame(encode_simple(muxmod.MESSAGE, 0, b"x"))  # before we opened
    c = Mux()
    c.open(RPC)
    c.frames_to_send()
    c.receive_frame(encode_open(0, RPC, b""))
    with pytest.raises(ProtocolError, match="reject"):
        c.receive_frame(encode_simple(muxmod.REJECT, 0))  # they opened: they must close


def test_channel_limit_applies_to_both_sides() -> None:
    a = Mux(max_channels=2)
    a.open(("p", b"1"))
    a.open(("p", b"2"))
    with pytest.raises(LocalError):
        a.open(("p", b"3"))
    b = Mux(max_channels=1)
    b.receive_frame(encode_open(0, ("p", b"1"), b""))
    with pytest.raises(ProtocolError, match="more than"):
        b.receive_frame(encode_open(1, ("p", b"2"), b""))
    with pytest.raises(LocalError):
        Mux().open(("p" * 65, b""))


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "empty"),
        (b"\x09\x00", "unknown mux frame type"),
        (b"\x01", "truncated"),
        (b"\x01\x80", "truncated"),
        (b"\x01\x80\x00", "minimally"),
        (b"\x01\xff\xff\xff\xff\x7f", "over"),
        (b"\x01\x00\x00", "trailing"),
        (b"\x02\x00\x00", "trailing"),
        (b"\x00\x00\x05ab", "protocol name"),
        (b"\x00\x00\x41" + b"a" * 65, "over"),
        (b"\x00\x00\x02\xff\xfe\x00", "UTF-8"),
        (b"\x00\x00\x01a\x05ab", "channel name"),
        (b"\x00\x00\x01a", "truncated"),
    ],
)
def test_malformed_frames(frame: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_frame(frame)


def test_frame_round_trip() -> None:
    frame = decode_frame(encode_open(300, ("rpc", b"name"), b"hs"))
    assert (frame.kind, frame.alias, frame.key, frame.body) == (0, 300, ("rpc", b"name"), b"hs")
    frame = decode_frame(encode_simple(muxmod.MESSAGE, 2**32 - 1, b"data"))
    assert (frame.kind, frame.alias, frame.body) == (3, 2**32 - 1, b"data")


def test_every_state_input_pair_outside_the_table_is_refused() -> None:
    """Walk the full (local, remote, input) space: rows act, the rest raise the right error."""
    inputs = ["open", "close", "reject", "send", "recv-open", "recv-close", "recv-reject",
              "recv-message"]
    for local, remote, verb in itertools.product(Half, Half, inputs):
        if (local, remote) == (Half.CLOSED, Half.CLOSED):
            continue  # forgotten record: not a state
        mux = Mux()
        record = muxmod._Record(RPC, local, remote, local_alias=0, remote_alias=0)
        mux._records[RPC] = record
        mux._by_local[0] = record
        mux._by_remote[0] = record
        row = TRANSITIONS.get((local, remote, verb))
        if verb.startswith("recv-"):
            if row is None:
                with pytest.raises(ProtocolError):
                    mux._remote(record, verb, b"")
            else:
                mux._remote(record, verb, b"")
                assert (record.local, record.remote) == row[:2]
        elif row is None:
            with pytest.raises(LocalError):
                mux._local(record, verb)
        else:
            mux._local(record, verb)
            assert (record.local, record.remote) == row[:2]


def test_message_short_cut_only_for_open_channels_with_one_byte_aliases() -> None:
    """``message_payload`` (the connection's short cut) answers exactly where the table would
    deliver and the alias is one byte; elsewhere it declines and the table decides."""
    a, b = Mux(max_channels=300), Mux(max_channels=300)
    keys = [("log", bytes([i >> 8, i & 0xFF])) for i in range(200)]
    for key in keys:
        a.open(key)
    deliver(a, b)
    for key in keys:
        b.open(key)
    deliver(b, a)
    for i, key in enumerate(keys):
        a.send(key, b"m%d" % i)
    frames = a.frames_to_send()
    for i, (key, frame) in enumerate(zip(keys, frames, strict=True)):
        fast = b.message_payload(frame)
        assert fast == ((key, b"m%d" % i) if i < 0x80 else None)  # aliases from 128 take 2 bytes
        assert b.receive_frame(frame) == [ChannelMessage(key, b"m%d" % i)]
    # Once we closed our half, a crossing message is dropped by the table, not delivered.
    a.send(keys[0], b"late")
    late = a.frames_to_send()[0]
    b.close(keys[0])
    assert b.message_payload(late) is None
    assert b.receive_frame(late) == []
    # An alias the peer never opened is still a protocol error.
    with pytest.raises(ProtocolError):
        b.receive_frame(encode_simple(muxmod.MESSAGE, 250, b"x"))
    assert b.message_payload(encode_simple(muxmod.MESSAGE, 127, b"x")) is not None
    assert b.message_payload(b"\x03") is None
