"""RPC over a channel: request ``{id, method, payload}``, response ``{id, result | error}``.

Theory of operation
-------------------
Two pure halves share one canonical-CBOR envelope (``autobase_py.encoding``):

* ``RpcClientCore`` numbers requests, remembers when each one gives up (``now + timeout``
  passed in; ``expire(now)`` reports the ones past due, ``next_deadline()`` says when to ask
  again) and matches responses to pending ids. A response for an id it issued but already gave
  up on is ignored (it simply arrived late); one for an id it never issued is a protocol
  violation.
* ``RpcServerCore`` checks each request envelope, answers unknown methods at once
  (``UNKNOWN_METHOD``) and hands the rest out as ``Call`` objects; the adapter decodes the
  payload with the method's codec (``BAD_REQUEST`` naming the field on failure), runs the
  handler under the server's concurrency cap and sends ``respond``/``fail``.

A malformed envelope means the peer does not speak the protocol: :class:`ProtocolError`, and
the connection closes. A well-formed request that fails is an error *response* with one of the
stable wire codes in ``ERROR_CODES``; ``error_to_wire`` is the one place exceptions become
codes.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .. import encoding
from ..errors import (
    AutobaseError,
    ChannelClosedError,
    DecodeError,
    EncodeError,
    InvalidKeyError,
    LocalError,
    NotWritableError,
    ProtocolError,
    RpcError,
    TimedOutError,
)

UNKNOWN_METHOD: Final = "UNKNOWN_METHOD"
BAD_REQUEST: Final = "BAD_REQUEST"
NOT_WRITABLE: Final = "NOT_WRITABLE"
UNAUTHORIZED: Final = "UNAUTHORIZED"
TIMEOUT: Final = "TIMEOUT"
CHANNEL_CLOSED: Final = "CHANNEL_CLOSED"
INTERNAL: Final = "INTERNAL"
ERROR_CODES: Final = frozenset(
    {UNKNOWN_METHOD, BAD_REQUEST, NOT_WRITABLE, UNAUTHORIZED, TIMEOUT, CHANNEL_CLOSED, INTERNAL}
)
DEFAULT_TIMEOUT: Final = 10.0
MAX_METHOD_BYTES: Final = 128
MAX_MESSAGE_CHARS: Final = 1024
DEFAULT_MAX_PENDING: Final = 1024


class UnauthorizedError(LocalError):
    """A handler refuses the caller's key (crosses the wire as ``UNAUTHORIZED``)."""

    code = UNAUTHORIZED


# -- codecs ----------------------------------------------------------------------------------


class Codec(Protocol):
    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class BytesCodec:
    """Payloads are raw bytes."""

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise EncodeError(f"expected bytes, got {type(value).__name__}")
        return bytes(value)

    def decode(self, data: bytes) -> Any:
        return data


class CborCodec:
    """Payloads are canonical CBOR values."""

    def encode(self, value: Any) -> bytes:
        return encoding.encode(value)

    def decode(self, data: bytes) -> Any:
        return encoding.decode(data)


BYTES: Final = BytesCodec()
CBOR: Final = CborCodec()


# -- envelopes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """A request the server must answer."""

    id: int
    method: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """A response the client received: exactly one of ``result`` and ``error`` is set."""

    id: int
    result: bytes | None
    error: RpcError | None


def encode_request(call_id: int, method: str, payload: bytes) -> bytes:
    return encoding.encode({"id": call_id, "method": method, "payload": payload})


def encode_result(call_id: int, result: bytes) -> bytes:
    return encoding.encode({"id": call_id, "result": result})


def encode_error(call_id: int, code: str, message: str) -> bytes:
    if code not in ERROR_CODES:
        raise LocalError(f"unknown RPC error code {code!r}")
    error = {"code": code, "message": message[:MAX_MESSAGE_CHARS]}
    return encoding.encode({"id": call_id, "error": error})


def _envelope(data: bytes, keys: tuple[frozenset[str], ...], what: str) -> dict[Any, Any]:
    try:
        obj = encoding.expect_map(encoding.decode(data), what)
        if frozenset(obj) not in keys:
            raise DecodeError(f"{what}: unexpected fields {sorted(map(str, obj))}")
        call_id = encoding.field(obj, "id", int, what)
        if not 0 <= call_id < 2**63:
            raise DecodeError(f"{what}: id out of range")
    except DecodeError as exc:
        raise ProtocolError(f"malformed RPC {what}: {exc.message}") from exc
    return obj


_REQUEST_KEYS = (frozenset({"id", "method", "payload"}),)
_RESPONSE_KEYS = (frozenset({"id", "result"}), frozenset({"id", "error"}))


def decode_request(data: bytes) -> Call:
    obj = _envelope(data, _REQUEST_KEYS, "request")
    try:
        method = encoding.field(obj, "method", str, "request")
        payload = encoding.field(obj, "payload", bytes, "request")
    except DecodeError as exc:
        raise ProtocolError(f"malformed RPC request: {exc.message}") from exc
    if not method or len(method.encode("utf-8")) > MAX_METHOD_BYTES:
        raise ProtocolError("malformed RPC request: bad method name")
    return Call(obj["id"], method, payload)


def decode_response(data: bytes) -> Reply:
    obj = _envelope(data, _RESPONSE_KEYS, "response")
    try:
        if "result" in obj:
            return Reply(obj["id"], encoding.field(obj, "result", bytes, "response"), None)
        error = encoding.expect_map(obj["error"], "response error")
        if frozenset(error) != {"code", "message"}:
            raise DecodeError("response error: unexpected fields")
        code = encoding.field(error, "code", str, "response error")
        message = encoding.field(error, "message", str, "response error")
    except DecodeError as exc:
        raise ProtocolError(f"malformed RPC response: {exc.message}") from exc
    if code not in ERROR_CODES:
        raise ProtocolError(f"malformed RPC response: unknown error code {code!r}")
    return Reply(obj["id"], None, RpcError(message, code=code))


def error_to_wire(exc: BaseException) -> tuple[str, str]:
    """The (code, message) an exception raised by a handler is sent as."""
    if isinstance(exc, RpcError):
        return (exc.code if exc.code in ERROR_CODES else INTERNAL), exc.message
    if isinstance(exc, NotWritableError):
        return NOT_WRITABLE, exc.message
    if isinstance(exc, UnauthorizedError):
        return UNAUTHORIZED, exc.message
    if isinstance(exc, (DecodeError, InvalidKeyError)):
        return BAD_REQUEST, exc.message
    if isinstance(exc, TimedOutError):
        return TIMEOUT, exc.message
    if isinstance(exc, ChannelClosedError):
        return CHANNEL_CLOSED, exc.message
    if isinstance(exc, AutobaseError):
        return INTERNAL, f"{exc.code}: {exc.message}"
    return INTERNAL, "internal error"


# -- client ----------------------------------------------------------------------------------


class RpcClientCore:
    """Pending calls of one client channel (sans-IO)."""

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._next_id = 0
        self._pending: dict[int, float] = {}  # id -> deadline
        self._deadlines: list[tuple[float, int]] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    def request(
        self, method: str, payload: bytes, *, now: float, timeout: float = DEFAULT_TIMEOUT
    ) -> tuple[int, bytes]:
        """A new call: its id and the bytes to send on the channel."""
        if len(self._pending) >= self.max_pending:
            raise LocalError(f"more than {self.max_pending} RPC calls pending on one channel")
        if not method or len(method.encode("utf-8")) > MAX_METHOD_BYTES:
            raise LocalError(f"bad RPC method name {method!r}")
        call_id = self._next_id
        self._next_id += 1
        deadline = now + timeout
        self._pending[call_id] = deadline
        heapq.heappush(self._deadlines, (deadline, call_id))
        return call_id, encode_request(call_id, method, payload)

    def receive(self, data: bytes) -> Reply | None:
        """The reply in ``data``, or None when it answers a call we already gave up on."""
        reply = decode_response(data)
        if reply.id >= self._next_id:
            raise ProtocolError(f"RPC response for id {reply.id}, which was never requested")
        if self._pending.pop(reply.id, None) is None:
            return None
        return reply

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> list[int]:
        """Ids whose deadline passed; they are forgotten (a late reply is ignored)."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self._deadlines)
            if self._pending.pop(call_id, None) is not None:
                expired.append(call_id)
        return expired

    def cancel(self, call_id: int) -> None:
        self._pending.pop(call_id, None)

    def fail_all(self) -> list[int]:
        ids = list(self._pending)
        self._pending.clear()
        self._deadlines.clear()
        return ids


# -- server ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about its caller."""

    remote_public_key: bytes
    method: str


Handler = Callable[[Any, CallContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    handler: Handler
    request: Codec
    response: Codec


class RpcServerCore:
    """Request intake of one server channel (sans-IO); ``methods`` is shared per server."""

    def __init__(
        self, methods: dict[str, Method], *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        self.methods = methods
        self.max_pending = max_pending
        self._in_flight: set[int] = set()

    def receive(self, data: bytes) -> Call | bytes:
        """A call to run, or the error response to send right away."""
        call = decode_request(data)
        if call.id in self._in_flight:
            raise ProtocolError(f"RPC id {call.id} reused while in flight")
        if len(self._in_flight) >= self.max_pending:
            raise ProtocolError(f"peer has more than {self.max_pending} RPC calls in flight")
        if call.method not in self.methods:
            return encode_error(call.id, UNKNOWN_METHOD, f"unknown method {call.method!r}")
        self._in_flight.add(call.id)
        return call

    def respond(self, call_id: int, result: bytes) -> bytes:
        self._in_flight.discard(call_id)
        return encode_result(call_id, result)

    def fail(self, call_id: int, code: str, message: str) -> bytes:
        self._in_flight.discard(call_id)
        return encode_error(call_id, code, message)


__all__ = [
    "BAD_REQUEST",
    "BYTES",
    "CBOR",
    "CHANNEL_CLOSED",
    "DEFAULT_TIMEOUT",
    "ERROR_CODES",
    "INTERNAL",
    "NOT_WRITABLE",
    "TIMEOUT",
    "UNAUTHORIZED",
    "UNKNOWN_METHOD",
    "BytesCodec",
    "Call",
    "CallContext",
    "CborCodec",
    "Codec",
    "Handler",
    "Method",
    "Reply",
    "RpcClientCore",
    "RpcServerCore",
    "UnauthorizedError",
    "decode_request",
    "decode_response",
    "encode_error",
    "encode_request",
    "encode_result",
    "error_to_wire",
]
