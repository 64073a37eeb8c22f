"""Every network parser fed random, truncated and bit-flipped input raises only typed errors.

The point is what does *not* happen: no other exception type, no hang (each parser returns
after consuming its input), no state that accepts garbage silently.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autobase_py import crypto
from autobase_py.errors import AutobaseError, HandshakeError, ProtocolError
from autobase_py.net import rpc
from autobase_py.net.connection import Message, PeerClosed, SecureConnection
from autobase_py.net.framing import FrameDecoder, encode_frame
from autobase_py.net.mux import Mux, decode_frame, encode_open
from autobase_py.net.noise import Handshake

KEYS = [crypto.key_pair(bytes([i]) * 32) for i in range(2)]


def established() -> tuple[SecureConnection, SecureConnection]:
    a = SecureConnection(KEYS[0], initiator=True, now=0.0)
    b = SecureConnection(KEYS[1], initiator=False, now=0.0)
    for _ in range(3):
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())
    return a, b


@settings(max_examples=200)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_frame_decoder_random_bytes(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder(max_frame=100)
    try:
        for i in range(0, len(data), chunk):
            for frame in decoder.feed(data[i : i + chunk]):
                assert len(frame) <= 100
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_mux_frame_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_frame(data)
    mux = Mux(max_channels=4)
    mux.open(("rpc", b""))
    mux.receive_frame(encode_open(0, ("rpc", b""), b""))
    with contextlib.suppress(ProtocolError):
        mux.receive_frame(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_rpc_envelopes_random_bytes(data: bytes) -> None:
    server = rpc.RpcServerCore({})
    client = rpc.RpcClientCore()
    client.request("m", b"", now=0.0)
    for parse in (server.receive, client.receive, rpc.decode_request, rpc.decode_response):
        with contextlib.suppress(ProtocolError):
            parse(data)


@settings(max_examples=100)
@given(st.binary(max_size=400), st.integers(1, 64), st.booleans())
def test_handshake_random_bytes(data: bytes, chunk: int, as_responder: bool) -> None:
    conn = SecureConnection(KEYS[0], initiator=not as_responder, now=0.0)
    try:
        for i in range(0, len(data), chunk):
            conn.receive_data(data[i : i + chunk])
        conn.receive_data(b"")
    except (ProtocolError, HandshakeError):
        pass
    hs = Handshake(KEYS[1], initiator=False)
    try:
        hs.read(data)
        hs.write()
    except HandshakeError:
        pass


@settings(max_examples=150)
@given(st.data())
def test_established_stream_truncated_or_flipped(data: st.DataObject) -> None:
    a, b = established()
    messages = data.draw(st.lists(st.binary(max_size=64), max_size=5))
    for m in messages:
        a.send(m)
    if data.draw(st.booleans()):
        a.close()
    wire = bytearray(a.data_to_send())
    mode = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if mode == "truncate" and wire:
        wire = wire[: data.draw(st.integers(0, len(wire)))]
    elif mode == "flip" and wire:
        pos = data.draw(st.integers(0, len(wire) - 1))
        wire[pos] ^= 1 << data.draw(st.integers(0, 7))
    else:
        wire += data.draw(st.binary(min_size=1, max_size=64))
    chunk = data.draw(st.integers(1, 40))
    got: list[bytes] = []
    try:
        for i in range(0, len(wire), chunk):
            for event in b.receive_data(bytes(wire[i : i + chunk])):
                if isinstance(event, Message):
                    got.append(event.data)
        for event in b.receive_data(b""):
            assert isinstance(event, PeerClosed)
    except ProtocolError:
        pass
    # Whatever got through is a prefix of what was sent: nothing forged, nothing reordered.
    assert got == messages[: len(got)]


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_random_frames_after_the_handshake_only_typed_errors(frames: list[bytes]) -> None:
    _, b = established()
    try:
        for frame in frames:
            for event in b.receive_data(encode_frame(frame)):
                if isinstance(event, Message):  # pragma: no cover - forging would need the key
                    raise AssertionError("forged message accepted")
    except AutobaseError as exc:
        assert isinstance(exc, ProtocolError)


@settings(max_examples=200)
@given(st.binary(max_size=300), st.booleans())
def test_replication_messages_random_bytes(data: bytes, as_proof: bool) -> None:
    from autobase_py.log import Log
    from autobase_py.net import replication as rep
    from autobase_py.storage import Storage

    writer = Log.create(Storage.open_memory(), KEYS[0])
    writer.append([b"a", b"b", b"c"])
    replica = Log.replica(Storage.open_memory(), writer.key)
    session = rep.LogSession(replica)
    requests = session.receive(rep.encode_sync(3, 0))[0]
    message = rep.encode_data(rep.decode_message(requests[0])["id"], data) if as_proof else data
    with contextlib.suppress(rep.InvalidPeerDataError):
        session.receive(message)
    assert replica.length in (0, 3)


@settings(max_examples=150)
@given(
    st.lists(st.binary(max_size=12), min_size=1, max_size=6),
    st.lists(st.binary(max_size=130), min_size=1, max_size=6),
    st.integers(0, 5),
    st.integers(0, 2),
    st.one_of(st.none(), st.integers(0, 400)),
)
def test_range_answers_with_random_contents(
    values: list[bytes], uncles: list[bytes], start: int, fork: int, cut: int | None
) -> None:
    """Random values and uncle bytes (also valid 40-byte multiples, also truncated messages)
    in a ``blocks`` answer: only InvalidPeerDataError, and nothing but true blocks stored."""
    from autobase_py.log import Log
    from autobase_py.net import replication as rep
    from autobase_py.storage import Storage

    writer = Log.create(Storage.open_memory(), KEYS[0])
    writer.append([b"block %d" % i for i in range(6)])
    replica = Log.replica(Storage.open_memory(), writer.key)
    session = rep.LogSession(replica)
    honest = rep.LogSession(writer)
    (upgrade,) = session.receive(rep.encode_sync(6, 0))[0]
    requests = session.receive(honest.receive(upgrade)[0][0])[0]
    asked = [rep.decode_message(m) for m in requests if rep.decode_message(m)["t"] == "range"]
    uncles = [u[: len(u) - len(u) % 40] if i % 2 else u for i, u in enumerate(uncles)]
    n = min(len(values), len(uncles))
    message = rep.encode_blocks(asked[0]["id"], fork, start, values[:n], uncles[:n])
    if cut is not None:
        message = message[:cut]
    with contextlib.suppress(rep.InvalidPeerDataError):
        session.receive(message)
    assert all(replica.get(i) == b"block %d" % i for i in range(6) if replica.has(i))


def _following(blocks: int) -> tuple[Any, Any, Any, Any]:
    """A writer of ``blocks`` blocks and a caught-up replica whose follow the writer holds."""
    from autobase_py.log import Log
    from autobase_py.net import replication as rep
    from autobase_py.storage import Storage

    writer = Log.create(Storage.open_memory(), KEYS[0])
    writer.append([b"block %d" % i for i in range(blocks)])
    replica = Log.replica(Storage.open_memory(), writer.key)
    theirs, mine = rep.LogSession(writer), rep.LogSession(replica)
    queues = {id(theirs): theirs.start(), id(mine): mine.start()}
    while queues[id(theirs)] or queues[id(mine)]:
        for src, dst in ((theirs, mine), (mine, theirs)):
            pending, queues[id(src)] = queues[id(src)], []
            for message in pending:
                queues[id(dst)] += dst.receive(message)[0]
    assert mine.following and theirs.holding
    return writer, replica, theirs, mine


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40),
    st.sampled_from(["values", "nodes", "proof", "flip", "cut", "random"]),
    st.data(),
)
def test_tips_with_random_contents(grow: int, how: str, data: st.DataObject) -> None:
    """A writer's honest tip, mangled (values, uncles, proof, a flipped bit, truncated) or
    replaced by random bytes: only InvalidPeerDataError, and nothing but true blocks stored
    (the length stays, or is the writer's, with every block up to it true)."""
    from autobase_py.net import replication as rep

    writer, replica, theirs, mine = _following(9)
    writer.append([b"block %d" % i for i in range(9, 9 + grow)])
    (tip,) = theirs.local_changed()
    msg = rep.decode_message(tip)
    values, nodes, proof = list(msg["values"]), msg["nodes"], msg["proof"]
    if how == "values":
        values = data.draw(st.lists(st.binary(max_size=12), max_size=grow + 2))
        message = rep.encode_tip(msg["id"], proof, values, nodes)
    elif how == "nodes":
        nodes = data.draw(st.binary(max_size=300))
        message = rep.encode_tip(msg["id"], proof, values, nodes[: len(nodes) - len(nodes) % 40])
    elif how == "proof":
        message = rep.encode_tip(msg["id"], data.draw(st.binary(max_size=300)), values, nodes)
    elif how == "flip":
        flipped = bytearray(tip)
        pos = data.draw(st.integers(0, len(tip) - 1))
        flipped[pos] ^= 1 << data.draw(st.integers(0, 7))
        message = bytes(flipped)
    elif how == "cut":
        message = tip[: data.draw(st.integers(0, len(tip) - 1))]
    else:
        message = data.draw(st.binary(max_size=300))
    with contextlib.suppress(rep.InvalidPeerDataError):
        mine.receive(message)
    assert replica.length in (9, 9 + grow)
    assert all(replica.get(i) == b"block %d" % i for i in range(replica.length) if replica.has(i))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 20), st.integers(0, 2)),
                min_size=1, max_size=4))
def test_random_follows_at_a_writer(follows: list[tuple[int, int, int]]) -> None:
    """Follows with any id, length and fork: held (one at most), answered with "none" or a tip
    that verifies, or the second held one refused as a protocol violation."""
    from autobase_py.net import replication as rep

    writer, _, _, _ = _following(9)
    session = rep.LogSession(writer)
    for request_id, length, fork in follows:
        held = session.holding
        try:
            out, _ = session.receive(rep.encode_follow(request_id, length, fork))
        except rep.InvalidPeerDataError:
            assert held
            continue
        kinds = [rep.decode_message(m)["t"] for m in out]
        if length == 0 or length > 9 or fork != 0:
            assert kinds == ["none"] and session.holding == held
        elif length < 9:
            assert kinds == ["tip"] and not session.holding
        else:
            assert kinds == [] and session.holding
