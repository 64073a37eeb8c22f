"""trio adapter: TCP ``listen``/``connect`` and an ``Endpoint`` holding one connection per key.

``listen`` is meant for ``await nursery.start(listen, host, port, key_pair, handler)``: it
reports the bound port through ``task_status.started(port)`` (pass port 0 to let the OS pick),
then handshakes each accepted socket and runs ``handler(connection)``. A peer that fails the
handshake, times out, or breaks the protocol is logged and dropped; the server keeps serving.

``Endpoint`` keeps at most one live connection per remote public key. When two connections to
the same key exist (both sides dialled at once), both sides keep the one *initiated by the
lower public key*, and if the same side initiated both, the one with the smaller handshake
hash; the loser is closed gracefully. The rule depends only on facts both ends share, not on
the order in which the handshakes finished, so both ends agree without talking.

Every function here takes ``liveness`` (default 5 s keepalives, 20 s idle timeout;
``LIVENESS_OFF`` disables both) for the connections it makes: a silent peer is dropped (see
``connection_trio``), and the endpoint forgets it like any other ended connection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial

import trio

from .. import crypto
from ..errors import AutobaseError, ChannelClosedError, ClosedError, TimedOutError
from .connection import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_LIVENESS, Liveness
from .connection_trio import Connection, ProtocolEntry, open_connection

log = logging.getLogger("autobase_py.net")

ConnectionHandler = Callable[[Connection], Awaitable[None]]


async def _wait_closed(connection: Connection) -> None:
    await connection.closed.wait()


async def _serve_one(
    stream: trio.SocketStream,
    *,
    key_pair: crypto.KeyPair,
    handler: ConnectionHandler,
    protocols: Mapping[str, ProtocolEntry] | None,
    handshake_timeout: float,
    liveness: Liveness,
) -> None:
    try:
        async with open_connection(
            stream,
            key_pair,
            initiator=False,
            protocols=protocols,
            handshake_timeout=handshake_timeout,
            liveness=liveness,
        ) as conn:
            await handler(conn)
    except AutobaseError as exc:
        log.info("dropped incoming connection: %s", exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.info("incoming connection broke: %r", exc)
    except Exception:  # a handler bug must not take the whole server down
        log.exception("connection handler failed")


async def listen(
    host: str,
    port: int,
    key_pair: crypto.KeyPair,
    handler: ConnectionHandler = _wait_closed,
    *,
    protocols: Mapping[str, ProtocolEntry] | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    liveness: Liveness = DEFAULT_LIVENESS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept encrypted connections on ``host:port`` until cancelled; reports the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    serve = partial(
        _serve_one,
        key_pair=key_pair,
        handler=handler,
        protocols=protocols,
        handshake_timeout=handshake_timeout,
        liveness=liveness,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        task_status.started(bound)


@asynccontextmanager
async def connect(
    host: str,
    port: int,
    key_pair: crypto.KeyPair,
    *,
    expected_remote_key: bytes | None = None,
    protocols: Mapping[str, ProtocolEntry] | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    liveness: Liveness = DEFAULT_LIVENESS,
) -> AsyncIterator[Connection]:
    """Dial ``host:port`` and yield the encrypted connection (closed gracefully on exit).

    Connection refused and other socket errors surface as ``OSError``; a bad peer as
    HandshakeError, a silent one as TimedOutError.
    """
    stream: trio.SocketStream | None = None
    with trio.move_on_after(handshake_timeout):
        stream = await trio.open_tcp_stream(host, port)
    if stream is None:
        raise TimedOutError(f"connecting to {host}:{port} timed out")
    async with open_connection(
        stream,
        key_pair,
        initiator=True,
        expected_remote_key=expected_remote_key,
        protocols=protocols,
        handshake_timeout=handshake_timeout,
        liveness=liveness,
    ) as conn:
        yield conn


def _initiator_key(conn: Connection, local_key: bytes) -> bytes:
    return local_key if conn.initiator else conn.remote_public_key


def keeps(existing: Connection, new: Connection, local_key: bytes) -> bool:
    """True when the duplicate rule keeps ``existing`` over ``new`` (same remote key)."""
    old_init = _initiator_key(existing, local_key)
    new_init = _initiator_key(new, local_key)
    if old_init == new_init:
        # One side dialled twice: both ends know both handshake hashes, so the smaller one
        # wins whatever order the two handshakes finished in on either side.
        return existing.handshake_hash < new.handshake_hash
    return old_init < new_init


class Endpoint:
    """A node's network presence: listeners, dialled peers, one connection per remote key.

    Create it with :func:`open_endpoint`.
    """

    def __init__(
        self,
        key_pair: crypto.KeyPair,
        nursery: trio.Nursery,
        *,
        protocols: Mapping[str, ProtocolEntry] | None,
        on_connection: ConnectionHandler | None,
        handshake_timeout: float,
        liveness: Liveness = DEFAULT_LIVENESS,
    ) -> None:
        self.key_pair = key_pair
        self.protocols = dict(protocols or {})
        self.on_connection = on_connection
        self.handshake_timeout = handshake_timeout
        self.liveness = liveness
        self.connections: dict[bytes, Connection] = {}
        self.established = 0  # handshakes completed, duplicates included
        self._changed = trio.Event()
        self._nursery = nursery
        self._closed = False

    @property
    def public_key(self) -> bytes:
        return self.key_pair.public_key

    async def wait_changed(self) -> None:
        """Return after the next connection is established or ends."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def listen(self, host: str, port: int = 0) -> int:
        """Start accepting on ``host:port``; returns the bound port."""
        if self._closed:
            raise ClosedError("endpoint is closed")
        bound: int = await self._nursery.start(
            partial(
                listen,
                host,
                port,
                self.key_pair,
                self._hold,
                protocols=self.protocols,
                handshake_timeout=self.handshake_timeout,
                liveness=self.liveness,
            )
        )
        return bound

    async def connect(
        self, host: str, port: int, expected_remote_key: bytes | None = None
    ) -> Connection:
        """The live connection to that peer, dialling if needed (reuses an existing one)."""
        if self._closed:
            raise ClosedError("endpoint is closed")
        if expected_remote_key is not None:
            existing = self.connections.get(expected_remote_key)
            if existing is not None and not existing.is_closed:
                return existing
        conn: Connection = await self._nursery.start(self._dial, host, port, expected_remote_key)
        return conn

    async def _dial(
        self,
        host: str,
        port: int,
        expected_remote_key: bytes | None,
        task_status: trio.TaskStatus[Connection],
    ) -> None:
        async with connect(
            host,
            port,
            self.key_pair,
            expected_remote_key=expected_remote_key,
            protocols=self.protocols,
            handshake_timeout=self.handshake_timeout,
            liveness=self.liveness,
        ) as conn:
            winner = self._register(conn)
            task_status.started(winner)
            if winner is conn:
                await self._serve(conn)

    async def _hold(self, conn: Connection) -> None:
        if self._register(conn) is conn:
            await self._serve(conn)

    def _register(self, conn: Connection) -> Connection:
        self.established += 1
        self._notify()
        key = conn.remote_public_key
        existing = self.connections.get(key)
        if existing is not None and not existing.is_closed:
            if keeps(existing, conn, self.public_key):
                log.info("duplicate connection to %s: keeping the existing one", key.hex()[:16])
                return existing
            log.info("duplicate connection to %s: replacing the existing one", key.hex()[:16])
            self._nursery.start_soon(existing.aclose)
        self.connections[key] = conn
        return conn

    async def _serve(self, conn: Connection) -> None:
        try:
            if self.on_connection is not None:
                self._nursery.start_soon(self._run_callback, conn)
            await conn.closed.wait()
        finally:
            if self.connections.get(conn.remote_public_key) is conn:
                del self.connections[conn.remote_public_key]
            self._notify()

    async def _run_callback(self, conn: Connection) -> None:
        assert self.on_connection is not None
        try:
            await self.on_connection(conn)
        except (ChannelClosedError, ClosedError):
            pass
        except Exception:  # a callback bug must not take the endpoint down
            log.exception("on_connection callback failed")

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True):
            for conn in list(self.connections.values()):
                await conn.aclose()
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_endpoint(
    key_pair: crypto.KeyPair,
    *,
    protocols: Mapping[str, ProtocolEntry] | None = None,
    on_connection: ConnectionHandler | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    liveness: Liveness = DEFAULT_LIVENESS,
) -> AsyncIterator[Endpoint]:
    """An endpoint whose listeners and connections end with the ``async with`` block."""
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        endpoint = Endpoint(
            key_pair,
            nursery,
            protocols=protocols,
            on_connection=on_connection,
            handshake_timeout=handshake_timeout,
            liveness=liveness,
        )
        try:
            yield endpoint
        except BaseException as exc:  # re-raised outside the task group (no ExceptionGroup)
            if isinstance(exc, trio.Cancelled):
                raise  # the task group and the cancel scopes handle their own
            body_error = exc
        finally:
            await endpoint.aclose()
    if body_error is not None:
        raise body_error


__all__ = ["ConnectionHandler", "Endpoint", "connect", "keeps", "listen", "open_endpoint"]
