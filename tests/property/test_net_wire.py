"""The replication messages' fast paths give the general encoder's bytes and the general
decoder's verdict: the same dict for every input it accepts, and no acceptance of anything the
general path refuses (canonical messages, then mangled ones: flipped, truncated, extended)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autobase_py import encoding
from autobase_py.net import replication_wire as wire
from autobase_py.net.replication_wire import InvalidPeerDataError

# Values around every CBOR width boundary, the 2**63 limit of the checks and the 64-bit limit.
EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63,
         2**64 - 1]
uints = st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1), st.integers(0, 300))
maybe = st.one_of(st.none(), uints)


@st.composite
def messages(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    kind = draw(st.sampled_from(["sync", "request", "data", "range", "none", "have", "follow",
                                 "tip"]))
    if kind == "sync":
        msg: dict[str, Any] = {"t": kind, "length": draw(uints), "fork": draw(uints)}
        return msg, wire.encode_sync(msg["length"], msg["fork"])
    if kind == "request":
        msg = {"t": kind, "id": draw(uints), "index": draw(maybe), "upgrade": draw(maybe)}
        return msg, wire.encode_request(msg["id"], msg["index"], msg["upgrade"])
    if kind == "data":
        msg = {"t": kind, "id": draw(uints), "proof": draw(st.binary(max_size=300))}
        return msg, wire.encode_data(msg["id"], msg["proof"])
    if kind == "range":
        start = draw(uints)
        end = draw(st.one_of(uints, st.integers(start, min(start + wire.MAX_RANGE + 1,
                                                                2**64 - 1))))
        msg = {"t": kind, "id": draw(uints), "start": start, "end": end}
        return msg, wire.encode_range(msg["id"], start, end)
    if kind == "follow":  # general encoder and decoder only (one per tip)
        msg = {"t": kind, "id": draw(uints), "fork": draw(uints), "length": draw(uints)}
        return msg, wire.encode_follow(msg["id"], msg["length"], msg["fork"])
    if kind == "tip":
        values = draw(st.lists(st.binary(max_size=20), max_size=4))
        nodes = draw(st.binary(max_size=130))
        msg = {"t": kind, "id": draw(uints), "proof": draw(st.binary(max_size=100)),
               "values": values, "nodes": nodes}
        return msg, wire.encode_tip(msg["id"], msg["proof"], values, nodes)
    if kind == "none":
        msg = {"t": kind, "id": draw(uints)}
        return msg, wire.encode_none(msg["id"])
    msg = {"t": kind, "start": draw(uints), "end": draw(uints)}
    return msg, wire.encode_have(msg["start"], msg["end"])


def general(data: bytes) -> dict[str, Any] | None:
    """The general path's verdict: the checked dict, or None (refused). decode_message takes
    its fast path for ``bytes`` only, so a bytearray goes the general way."""
    try:
        return wire.decode_message(bytearray(data))  # type: ignore[arg-type]
    except InvalidPeerDataError:
        return None


@settings(max_examples=600, deadline=None)
@given(messages())
def test_fast_encoders_write_the_general_encoders_bytes(case: tuple[dict[str, Any], bytes]) -> None:
    msg, data = case
    assert data == encoding.encode(msg)


@settings(max_examples=600, deadline=None)
@given(messages(), st.data())
def test_fast_decoder_agrees_with_the_general_one(
    case: tuple[dict[str, Any], bytes], draw: st.DataObject
) -> None:
    _, data = case
    variants = [data]
    if data:
        pos = draw.draw(st.integers(0, len(data) - 1))
        flipped = bytearray(data)
        flipped[pos] ^= draw.draw(st.integers(1, 255))
        variants += [bytes(flipped), data[:pos], data + draw.draw(st.binary(min_size=1,
                                                                            max_size=9))]
    for variant in variants:
        expected = general(variant)
        fast = wire._decode_fast(variant)
        if fast is not None:
            assert fast == expected
            assert list(fast) == list(expected or {})  # same key order too
        try:
            got: dict[str, Any] | None = wire.decode_message(variant)
        except InvalidPeerDataError:
            got = None
        assert got == expected


def test_fast_decoder_takes_the_hot_messages() -> None:
    """Not a vacuous agreement: the canonical hot messages do take the fast path."""
    for data in (wire.encode_sync(10**6, 3), wire.encode_request(7, None, 12),
                 wire.encode_request(300, 12, 12), wire.encode_data(70000, b"p" * 300),
                 wire.encode_range(1, 5, 9), wire.encode_none(2), wire.encode_have(3, 4)):
        fast = wire._decode_fast(data)
        assert fast is not None
        assert fast == general(data)
    # and refuses what decode_message refuses, such as an empty request or range
    for data in (wire.encode_request(1, None, None), wire.encode_range(1, 5, 5),
                 wire.encode_have(4, 4), wire.encode_sync(2**63, 0)):
        assert wire._decode_fast(data) is None
