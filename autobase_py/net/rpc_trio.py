"""trio adapter for RPC: ``RpcServer`` (a channel protocol), ``RpcClient``, ``RpcPool``.

* ``RpcServer`` registers methods by name with a request and a response codec and serves
  every ``("rpc", name)`` channel a peer opens (pass ``server.protocols`` to ``listen``/
  ``connect``/``open_endpoint``). Calls run concurrently, at most ``concurrency`` at a time
  across all connections of the server (the rest wait their turn).
* ``RpcClient`` opens the channel and matches replies to calls; each call has a timeout
  (default 10 s). Client-side failures are raised as ``RpcError`` subclasses whose ``code`` is
  ``TIMEOUT`` or ``CHANNEL_CLOSED`` (and which are also ``TimedOutError``/
  ``ChannelClosedError``), so callers can match on the wire code alone.
* ``RpcPool`` spreads calls over several servers: a random healthy server per call; on a
  timeout, a closed channel or a failed dial it tries another (3 tries in all), and a failed
  server rests for a jittered, doubling backoff before it is dialled again (``pool``). Its
  connections take ``liveness`` like any other: a server gone silent is dropped, so the next
  call dials another instead of waiting on a dead link.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio

from .. import crypto
from ..errors import (
    AutobaseError,
    ChannelClosedError,
    ClosedError,
    DecodeError,
    RpcError,
    TimedOutError,
)
from .connection import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_LIVENESS, Liveness
from .connection_trio import Channel, ChannelHandler, Connection
from .endpoint_trio import connect
from .pool import ServerChoice
from .rpc import (
    BAD_REQUEST,
    BYTES,
    CHANNEL_CLOSED,
    DEFAULT_TIMEOUT,
    TIMEOUT,
    Call,
    CallContext,
    Codec,
    Handler,
    Method,
    Reply,
    RpcClientCore,
    RpcServerCore,
    error_to_wire,
)

log = logging.getLogger("autobase_py.net.rpc")

PROTOCOL = "rpc"
DEFAULT_CONCURRENCY = 64
DEFAULT_TRIES = 3


class RpcTimeoutError(RpcError, TimedOutError):
    """The call got no reply within its timeout."""

    code = TIMEOUT


class RpcChannelClosedError(RpcError, ChannelClosedError):
    """The channel or connection closed before the reply arrived (or could not be opened)."""

    code = CHANNEL_CLOSED


# -- server ----------------------------------------------------------------------------------


class RpcServer:
    """Methods by name, served on every RPC channel a peer opens."""

    def __init__(self, *, concurrency: int = DEFAULT_CONCURRENCY, protocol: str = PROTOCOL) -> None:
        self.protocol = protocol
        self.methods: dict[str, Method] = {}
        self.limiter = trio.CapacityLimiter(concurrency)

    def method(
        self, name: str, handler: Handler, *, request: Codec = BYTES, response: Codec = BYTES
    ) -> None:
        """Register ``handler(request_value, context) -> response_value`` under ``name``."""
        if name in self.methods:
            raise ValueError(f"method {name!r} registered twice")
        self.methods[name] = Method(name, handler, request, response)

    @property
    def protocols(self) -> dict[str, ChannelHandler]:
        return {self.protocol: self.serve_channel}

    async def serve_channel(self, channel: Channel) -> None:
        """Answer requests on ``channel`` until it closes (in-flight calls are then cancelled)."""
        core = RpcServerCore(self.methods)
        async with trio.open_nursery() as calls:
            async for data in channel:
                intake = core.receive(data)  # ProtocolError closes the connection
                if isinstance(intake, bytes):
                    await channel.send(intake)
                else:
                    calls.start_soon(self._run, channel, core, intake)
            calls.cancel_scope.cancel()

    async def _run(self, channel: Channel, core: RpcServerCore, call: Call) -> None:
        async with self.limiter:
            method = self.methods[call.method]
            try:
                value = method.request.decode(call.payload)
            except DecodeError as exc:
                reply = core.fail(call.id, BAD_REQUEST, exc.message)
            else:
                context = CallContext(channel.remote_public_key, call.method)
                try:
                    result = method.response.encode(await method.handler(value, context))
                except Exception as exc:
                    code, message = error_to_wire(exc)
                    if not isinstance(exc, AutobaseError):
                        log.exception("RPC method %r failed", call.method)
                    reply = core.fail(call.id, code, message)
                else:
                    reply = core.respond(call.id, result)
        with suppress(ChannelClosedError):
            await channel.send(reply)


# -- client ----------------------------------------------------------------------------------


class _Waiter:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply | None = None


class RpcClient:
    """Calls over one RPC channel; create it with :meth:`open`."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.core = RpcClientCore()
        self._waiters: dict[int, _Waiter] = {}
        self.closed = False

    @classmethod
    async def open(
        cls, connection: Connection, name: bytes = b"", *, protocol: str = PROTOCOL
    ) -> RpcClient:
        try:
            channel = await connection.open_channel((protocol, name))
        except ChannelClosedError as exc:
            raise RpcChannelClosedError(f"cannot open the RPC channel: {exc.message}") from exc
        client = cls(channel)
        connection.spawn(client._read)
        return client

    async def _read(self) -> None:
        try:
            async for data in self.channel:
                reply = self.core.receive(data)  # ProtocolError closes the connection
                if reply is not None:
                    waiter = self._waiters.pop(reply.id, None)
                    if waiter is not None:
                        waiter.reply = reply
                        waiter.done.set()
        finally:
            self.closed = True
            self.core.fail_all()
            for waiter in self._waiters.values():
                waiter.done.set()
            self._waiters.clear()

    async def call(
        self,
        method: str,
        value: Any = b"",
        *,
        request: Codec = BYTES,
        response: Codec = BYTES,
        call_timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """Call ``method``; returns the decoded result or raises RpcError with the wire code."""
        if self.closed or self.channel.closed.is_set():
            raise RpcChannelClosedError("RPC channel is closed")
        payload = request.encode(value)
        now = trio.current_time()
        call_id, data = self.core.request(method, payload, now=now, timeout=call_timeout)
        waiter = self._waiters[call_id] = _Waiter()
        try:
            try:
                await self.channel.send(data)
            except ChannelClosedError as exc:
                raise RpcChannelClosedError(f"RPC channel closed: {exc.message}") from exc
            with trio.move_on_at(now + call_timeout):
                await waiter.done.wait()
            if not waiter.done.is_set():
                raise RpcTimeoutError(f"{method} got no reply within {call_timeout} s")
        finally:
            self._waiters.pop(call_id, None)
            self.core.cancel(call_id)
        reply = waiter.reply
        if reply is None:
            raise RpcChannelClosedError(f"RPC channel closed before {method} was answered")
        if reply.error is not None:
            raise reply.error
        assert reply.result is not None
        return response.decode(reply.result)

    async def aclose(self) -> None:
        await self.channel.aclose()


# -- pool ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int
    public_key: bytes | None = None  # when set, the handshake must prove this key


_FAILOVER = (OSError, TimedOutError, ChannelClosedError, AutobaseError)


class RpcPool:
    """A failover client over several servers; create it with :func:`open_rpc_pool`."""

    def __init__(
        self,
        key_pair: crypto.KeyPair,
        servers: Sequence[ServerAddress],
        nursery: trio.Nursery,
        *,
        tries: int = DEFAULT_TRIES,
        timeout: float = DEFAULT_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        liveness: Liveness = DEFAULT_LIVENESS,
        rng: random.Random | None = None,
        protocol: str = PROTOCOL,
    ) -> None:
        self.key_pair = key_pair
        self.servers = list(servers)
        self.choice = ServerChoice(len(self.servers), rng=rng)
        self.tries = tries
        self.timeout = timeout
        self.handshake_timeout = handshake_timeout
        self.liveness = liveness
        self.protocol = protocol
        self._nursery = nursery
        self._clients: dict[int, RpcClient] = {}
        self._dialing: dict[int, trio.Lock] = {}
        self._closed = False

    async def call(
        self,
        method: str,
        value: Any = b"",
        *,
        request: Codec = BYTES,
        response: Codec = BYTES,
        call_timeout: float | None = None,
    ) -> Any:
        """Call ``method`` on some server, failing over on timeouts and lost connections."""
        tried: set[int] = set()
        last: RpcError = RpcChannelClosedError("no server could be reached")
        for _ in range(self.tries):
            if self._closed:
                raise ClosedError("pool is closed")
            index = self.choice.pick(trio.current_time(), frozenset(tried))
            if index is None:
                await trio.sleep_until(self.choice.next_available())
                index = self.choice.pick(trio.current_time(), frozenset(tried))
                assert index is not None
            tried.add(index)
            limit = self.timeout if call_timeout is None else call_timeout
            try:
                client = await self._client(index, min(limit, self.handshake_timeout))
                result = await client.call(
                    method, value, request=request, response=response, call_timeout=limit
                )
            except RpcError as exc:
                if exc.code not in (TIMEOUT, CHANNEL_CLOSED):
                    self.choice.succeeded(index)  # the server answered; the call failed
                    raise
                last = exc
                self._failed(index, exc)
            except DecodeError:
                raise  # a reply we cannot decode: retrying elsewhere would hide the bug
            except _FAILOVER as exc:
                last = RpcChannelClosedError(f"server {self.servers[index]} unreachable: {exc}")
                self._failed(index, exc)
            else:
                self.choice.succeeded(index)
                return result
        raise last

    def _failed(self, index: int, exc: BaseException) -> None:
        log.info("RPC server %s failed (%s); trying another", self.servers[index], exc)
        self.choice.failed(index, trio.current_time())
        client = self._clients.pop(index, None)
        if client is not None:
            # A server that timed out may be wedged: drop it now instead of waiting for a
            # graceful close it may never answer.
            client.channel.connection.abort(ChannelClosedError(f"failed over: {exc}"))

    async def _client(self, index: int, dial_timeout: float) -> RpcClient:
        lock = self._dialing.setdefault(index, trio.Lock())
        async with lock:
            client = self._clients.get(index)
            if client is not None and not client.closed and not client.channel.closed.is_set():
                return client
            fresh: RpcClient = await self._nursery.start(self._hold, index, dial_timeout)
            self._clients[index] = fresh
            return fresh

    async def _hold(
        self, index: int, dial_timeout: float, task_status: trio.TaskStatus[RpcClient]
    ) -> None:
        server = self.servers[index]
        async with connect(
            server.host,
            server.port,
            self.key_pair,
            expected_remote_key=server.public_key,
            handshake_timeout=dial_timeout,
            liveness=self.liveness,
        ) as conn:
            client = await RpcClient.open(conn, protocol=self.protocol)
            task_status.started(client)
            await conn.closed.wait()
        if self._clients.get(index) is client:
            del self._clients[index]

    async def aclose(self) -> None:
        self._closed = True
        self._nursery.cancel_scope.cancel()
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_rpc_pool(
    key_pair: crypto.KeyPair,
    servers: Sequence[ServerAddress],
    **options: Any,
) -> AsyncIterator[RpcPool]:
    """A pool whose connections end with the ``async with`` block (options: see RpcPool)."""
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        pool = RpcPool(key_pair, servers, nursery, **options)
        try:
            yield pool
        except BaseException as exc:  # re-raised outside the task group (no ExceptionGroup)
            if isinstance(exc, trio.Cancelled):
                raise  # the task group and the cancel scopes handle their own
            body_error = exc
        finally:
            await pool.aclose()
    if body_error is not None:
        raise body_error


__all__ = [
    "PROTOCOL",
    "RpcChannelClosedError",
    "RpcClient",
    "RpcPool",
    "RpcServer",
    "RpcTimeoutError",
    "ServerAddress",
    "open_rpc_pool",
]
