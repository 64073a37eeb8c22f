"""RPC envelopes, the client and server cores, error mapping, and the pool's server choice."""

from __future__ import annotations

import random

import pytest

from autobase_py import encoding
from autobase_py.errors import (
    ChannelClosedError,
    DecodeError,
    InvalidKeyError,
    LocalError,
    NotWritableError,
    ProtocolError,
    RpcError,
    StorageError,
    TimedOutError,
)
from autobase_py.net import rpc
from autobase_py.net.pool import ServerChoice
from autobase_py.net.rpc import (
    BYTES,
    CBOR,
    Call,
    CallContext,
    Method,
    RpcClientCore,
    RpcServerCore,
    UnauthorizedError,
    decode_request,
    decode_response,
    encode_error,
    error_to_wire,
)


async def _noop(value: object, context: CallContext) -> object:
    return value


METHODS = {"echo": Method("echo", _noop, BYTES, BYTES)}


def test_request_reply_round_trip() -> None:
    client = RpcClientCore()
    server = RpcServerCore(METHODS)
    call_id, data = client.request("echo", b"hi", now=0.0)
    call = server.receive(data)
    assert call == Call(call_id, "echo", b"hi")
    reply = client.receive(server.respond(call_id, b"hi back"))
    assert reply is not None and reply.result == b"hi back" and reply.error is None
    assert client.pending == 0


def test_unknown_method_is_answered_at_once() -> None:
    client = RpcClientCore()
    server = RpcServerCore(METHODS)
    _, data = client.request("nope", b"", now=0.0)
    answer = server.receive(data)
    assert isinstance(answer, bytes)
    reply = client.receive(answer)
    assert reply is not None and reply.error is not None
    assert reply.error.code == rpc.UNKNOWN_METHOD


def test_error_reply_carries_code_and_message() -> None:
    client = RpcClientCore()
    server = RpcServerCore(METHODS)
    call_id, data = client.request("echo", b"", now=0.0)
    server.receive(data)
    reply = client.receive(server.fail(call_id, rpc.NOT_WRITABLE, "replica"))
    assert reply is not None and reply.error is not None
    assert (reply.error.code, reply.error.message) == ("NOT_WRITABLE", "replica")
    with pytest.raises(LocalError):
        encode_error(1, "MADE_UP", "x")


def test_server_refuses_reused_ids_and_too_many_in_flight() -> None:
    server = RpcServerCore(METHODS, max_pending=2)
    server.receive(rpc.encode_request(0, "echo", b""))
    with pytest.raises(ProtocolError, match="reused"):
        server.receive(rpc.encode_request(0, "echo", b""))
    server.receive(rpc.encode_request(1, "echo", b""))
    with pytest.raises(ProtocolError, match="in flight"):
        server.receive(rpc.encode_request(2, "echo", b""))
    server.respond(0, b"")
    server.receive(rpc.encode_request(0, "echo", b""))  # free again once answered


def test_client_timeouts_late_replies_and_unknown_ids() -> None:
    client = RpcClientCore()
    first, _ = client.request("echo", b"", now=0.0, timeout=5.0)
    second, _ = client.request("echo", b"", now=1.0, timeout=10.0)
    assert client.next_deadline() == 5.0
    assert client.expire(4.9) == []
    assert client.expire(5.0) == [first]
    assert client.next_deadline() == 11.0
    assert client.receive(rpc.encode_result(first, b"late")) is None  # ignored, not an error
    with pytest.raises(ProtocolError, match="never requested"):
        client.receive(rpc.encode_result(99, b""))
    client.cancel(second)
    assert client.next_deadline() is None
    assert client.fail_all() == []
    client.request("echo", b"", now=0.0)
    assert len(client.fail_all()) == 1


def test_client_limits() -> None:
    client = RpcClientCore(max_pending=1)
    client.request("echo", b"", now=0.0)
    with pytest.raises(LocalError):
        client.request("echo", b"", now=0.0)
    with pytest.raises(LocalError):
        RpcClientCore().request("", b"", now=0.0)


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2],
        {"id": 1, "method": "x"},
        {"id": 1, "method": "x", "payload": b"", "extra": 1},
        {"id": -1, "method": "x", "payload": b""},
        {"id": "1", "method": "x", "payload": b""},
        {"id": 1, "method": "", "payload": b""},
        {"id": 1, "method": "x" * 129, "payload": b""},
        {"id": 1, "method": 5, "payload": b""},
        {"id": 1, "method": "x", "payload": "text"},
        {"id": True, "method": "x", "payload": b""},
    ],
)
def test_malformed_requests(obj: object) -> None:
    with pytest.raises(ProtocolError):
        decode_request(encoding.encode(obj))


@pytest.mark.parametrize(
    "obj",
    [
        {"id": 1},
        {"id": 1, "result": b"", "error": {"code": "INTERNAL", "message": ""}},
        {"id": 1, "result": "text"},
        {"id": 1, "error": "oops"},
        {"id": 1, "error": {"code": "MADE_UP", "message": ""}},
        {"id": 1, "error": {"code": "INTERNAL"}},
        {"id": 1, "error": {"code": "INTERNAL", "message": 3}},
        {"id": 1, "error": {"code": "INTERNAL", "message": "", "x": 1}},
    ],
)
def test_malformed_responses(obj: object) -> None:
    with pytest.raises(ProtocolError):
        decode_response(encoding.encode(obj))


def test_non_canonical_envelopes_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode_request(b"\xff")
    good = rpc.encode_request(1, "echo", b"")
    with pytest.raises(ProtocolError):
        decode_request(good + b"\x00")


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RpcError("x", code="UNAUTHORIZED"), "UNAUTHORIZED"),
        (RpcError("x", code="NOT_A_CODE"), "INTERNAL"),
        (NotWritableError("x"), "NOT_WRITABLE"),
        (UnauthorizedError("x"), "UNAUTHORIZED"),
        (DecodeError("x"), "BAD_REQUEST"),
        (InvalidKeyError("x"), "BAD_REQUEST"),
        (TimedOutError("x"), "TIMEOUT"),
        (ChannelClosedError("x"), "CHANNEL_CLOSED"),
        (StorageError("disk"), "INTERNAL"),
        (KeyError("secret detail"), "INTERNAL"),
    ],
)
def test_error_to_wire(exc: BaseException, code: str) -> None:
    got_code, message = error_to_wire(exc)
    assert got_code == code
    if isinstance(exc, KeyError):
        assert "secret" not in message  # internals do not leak to callers


def test_codecs() -> None:
    assert CBOR.decode(CBOR.encode({"a": [1, b"x"]})) == {"a": [1, b"x"]}
    assert BYTES.decode(BYTES.encode(b"raw")) == b"raw"
    with pytest.raises(LocalError):
        BYTES.encode("text")
    with pytest.raises(DecodeError):
        CBOR.decode(b"\xff")


# -- server choice (the pool's policy) -----------------------------------------------------


def test_pick_prefers_untried_available_servers() -> None:
    choice = ServerChoice(3, rng=random.Random(1))
    assert {choice.pick(0.0, frozenset({0, 1})) for _ in range(20)} == {2}
    assert choice.pick(0.0, frozenset({0, 1, 2})) in {0, 1, 2}  # all tried: any available
    with pytest.raises(LocalError):
        ServerChoice(0)


def test_failed_servers_rest_with_jittered_doubling_backoff() -> None:
    choice = ServerChoice(2, rng=random.Random(7), backoff_base=1.0, backoff_cap=8.0)
    delays = []
    for _ in range(6):
        delays.append(choice.failed(0, 100.0) - 100.0)
    for n, delay in enumerate(delays):
        nominal = min(8.0, 2.0**n)
        assert 0.5 * nominal <= delay < 1.5 * nominal
    assert not choice.available(0, 100.0)
    assert {choice.pick(100.0) for _ in range(20)} == {1}
    choice.failed(1, 100.0)
    assert choice.pick(100.0) is None
    assert choice.next_available() == min(s.retry_at for s in choice.servers)
    assert choice.pick(choice.next_available()) is not None
    choice.succeeded(0)
    assert choice.available(0, 0.0) and choice.servers[0].failures == 0
