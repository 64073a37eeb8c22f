"""trio adapter for replication: a ``Replicator`` runs a ``LogSession`` per log per connection.

``Replicator`` is a channel protocol for ``"log"``: it answers the peer's channel requests for
logs it holds (after checking the peer's capability) and opens channels for its own logs on
every connection it is attached to (``attach``/``replicate``), including logs ``add``-ed
later. Each session runs in the connection's task group: a reader (peer messages into the
core) and a pusher. ``announce(log)`` tells every session of a log that it changed locally
(after an append, or after a peer's blocks were stored): the session's news (sync, "have",
new requests) is computed right before its connection's next write (``Connection.defer``),
so changes made until then share one sync; only a connection with too much queued for its
socket leaves it to the pusher, which waits for the socket first. A session holding the peer's
follow has news the peer is waiting for (a tip): its write skips the news delay
(``Connection.defer(urgent=True)``, ``Connection.hurry``).
Waiting is by events: ``wait_for(log, predicate)`` and ``fetch(log, index)`` (a sparse read:
asks the peers that have the block, then waits until it is verified and stored).

A peer whose data fails verification makes the core raise ``InvalidPeerDataError``; it reaches
the connection's single error boundary, which logs the reason and closes that connection only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import trio

from ..errors import ChannelClosedError, LocalError
from ..log import Log
from ..storage_trio import write_lock
from ..store import Store
from .connection_trio import Channel, Connection
from .mux import Key
from .replication import (
    DEFAULT_RANGE,
    DEFAULT_WINDOW,
    PROTOCOL,
    WIRE_VERSION,
    Claims,
    InvalidPeerDataError,
    LogSession,
    capability,
    channel_key,
)

log = logging.getLogger("autobase_py.net.replication")

BATCH = 256  # at most this many messages handled per storage transaction,
BATCH_BYTES = 1 << 18  # and no more once this many bytes of them were handled (latency)


@dataclass(eq=False, slots=True)
class _Live:
    session: LogSession
    channel: Channel
    wake: trio.Event = field(default_factory=trio.Event)
    news_due: bool = False  # a ``_send_news`` is deferred to the connection's next write


class Replicator:
    """Replicates a set of logs (a store's, plus any ``add``-ed) over many connections."""

    def __init__(
        self,
        store: Store | None = None,
        logs: Iterable[Log] = (),
        *,
        eager: bool = True,
        window: int = DEFAULT_WINDOW,
        range_size: int = DEFAULT_RANGE,
        version: int = WIRE_VERSION,
    ) -> None:
        self.eager = eager
        self.window = window
        self.range_size = range_size
        self.version = version  # 3: speak wire version 3 (interop tests)
        self._logs: dict[bytes, Log] = {}
        self._keys: set[bytes] = set()  # the keys of ``_logs``' logs
        self._announced: dict[bytes, tuple[int, int]] = {}  # see ``announce_if_changed``
        self._claims: dict[bytes, Claims] = {}
        self._sessions: dict[bytes, set[_Live]] = {}
        self._updated: dict[bytes, trio.Event] = {}
        self._connections: set[Connection] = set()
        self.remote_changes = 0  # bumped whenever a peer's data was stored (any log)
        self._remote_event = trio.Event()
        self.reopened = 0  # sessions opened again after their channel overflowed
        self._overflows: dict[tuple[Connection, bytes], int] = {}  # per connection and log
        if store is not None:
            for key in store.log_keys():
                self._register(store.get(key=key))
        for item in logs:
            self._register(item)

    @property
    def protocols(self) -> dict[str, Replicator]:
        return {PROTOCOL: self}

    @property
    def logs(self) -> list[Log]:
        return list(self._logs.values())

    def _register(self, item: Log) -> bool:
        if item.discovery_key in self._logs:
            return False
        dk = item.discovery_key
        self._logs[dk] = item
        self._keys.add(item.key)
        self._claims[dk] = Claims()
        self._sessions[dk] = set()
        self._updated[dk] = trio.Event()
        return True

    # -- connections -------------------------------------------------------------------------

    def attach(self, connection: Connection) -> None:
        """Replicate every log on ``connection`` (and answer the peer's log channels)."""
        if connection in self._connections or connection.is_closed:
            return
        connection.protocols[PROTOCOL] = self
        self._connections.add(connection)
        connection.spawn(self._forget_when_closed, connection)
        for item in self._logs.values():
            connection.spawn(self._open, connection, item)

    async def replicate(self, connection: Connection) -> None:
        """``attach``, then wait until the connection ends."""
        self.attach(connection)
        await connection.closed.wait()

    async def _forget_when_closed(self, connection: Connection) -> None:
        try:
            await connection.closed.wait()
        finally:
            self._connections.discard(connection)
            for pair in [p for p in self._overflows if p[0] is connection]:
                del self._overflows[pair]

    def add(self, item: Log) -> None:
        """Start replicating ``item`` on every attached connection too."""
        if self._register(item):
            for connection in list(self._connections):
                if not connection.is_closed:
                    connection.spawn(self._open, connection, item)

    def announce(self, item: Log) -> None:
        """``item`` changed locally (an append, blocks stored): tell the peers, wake the waiters.

        Each session's news (``local_changed``: a sync, "have", requests) is computed right
        before its connection's next write (``Connection.defer``), once for every change made
        meanwhile: a burst of appends costs each peer one sync, not one per append, and no
        task switch. Only when a connection has too much queued already does the session's
        pusher send it, after waiting for the socket (backpressure)."""
        dk = item.discovery_key
        for live in self._sessions.get(dk, ()):
            # A session holding the peer's follow has news the peer waits for (a tip): it
            # goes out without the news delay of ``Connection.defer``.
            urgent = live.session.holding
            if live.wake.is_set():
                continue  # the pusher is due anyway and will look
            if live.news_due:
                if urgent:
                    live.channel.connection.hurry()
                continue  # the deferred call is due anyway and will look
            if live.channel.can_send_now:
                live.news_due = True
                live.channel.connection.defer(partial(self._send_news, live), urgent=urgent)
            elif not live.channel.closed.is_set():
                live.wake.set()
        event = self._updated.get(dk)
        if event is not None:
            event.set()
            self._updated[dk] = trio.Event()

    def _send_news(self, live: _Live) -> None:
        """The deferred half of ``announce``: runs in the connection's writer before a write.
        Not while a transaction is open (a base's cycle spanning awaits, whose appends are
        not committed yet): then once it ends."""
        live.news_due = False
        channel = live.channel
        if channel.closed.is_set() or live.wake.is_set():
            return
        storage = live.session.log.storage
        if storage.in_transaction:
            live.news_due = True
            storage.call_when_idle(partial(self._news_after_transaction, live))
        elif channel.can_send_now:
            channel.send_now(live.session.local_changed())
        else:
            live.wake.set()

    def _news_after_transaction(self, live: _Live) -> None:
        if live.news_due and not live.channel.closed.is_set():
            live.channel.connection.defer(
                partial(self._send_news, live), urgent=live.session.holding
            )

    def announce_if_changed(self, item: Log) -> None:
        """``announce`` unless ``item``'s (length, fork) is what this method last announced
        for it (a no-op announcement would only wake every session to find nothing new)."""
        state = (item.length, item.fork)
        if self._announced.get(item.discovery_key) != state:
            self._announced[item.discovery_key] = state
            self.announce(item)

    def has_key(self, key: bytes) -> bool:
        """The log with this key is replicated here."""
        return key in self._keys

    # -- channel protocol --------------------------------------------------------------------

    def accept(self, connection: Connection, key: Key, handshake: bytes) -> bytes | None:
        item = self._logs.get(key[1])
        if item is None:
            return None  # not a log we know: refuse quietly
        self._check_capability(connection, item, handshake)
        return self._our_capability(connection, item)

    async def run(self, channel: Channel) -> None:
        await self._session(channel, self._logs[channel.key[1]])

    def _our_capability(self, connection: Connection, item: Log) -> bytes:
        return capability(item.key, connection.handshake_hash, initiator=connection.initiator)

    def _check_capability(self, connection: Connection, item: Log, handshake: bytes) -> None:
        expected = capability(
            item.key, connection.handshake_hash, initiator=not connection.initiator
        )
        if handshake != expected:
            raise InvalidPeerDataError(f"bad capability for log {item.key.hex()[:16]}")

    async def _open(self, connection: Connection, item: Log) -> None:
        key = channel_key(item)
        if connection.has_channel(key) or connection.is_closed:
            return
        try:
            channel = await connection.open_channel(key, self._our_capability(connection, item))
        except ChannelClosedError:
            return  # the peer does not know this log
        self._check_capability(connection, item, channel.remote_handshake)
        try:
            await self._session(channel, item)
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()

    # -- sessions ----------------------------------------------------------------------------

    async def _session(self, channel: Channel, item: Log) -> None:
        dk = item.discovery_key
        session = LogSession(
            item, self._claims[dk], eager=self.eager, window=self.window,
            range_size=self.range_size, version=self.version,
        )
        live = _Live(session, channel)
        self._sessions[dk].add(live)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._push, live)
                await self._send(channel, session.start())
                storage = item.storage
                lock = write_lock(storage)
                async for data in channel:
                    # A base's apply cycle holds its transaction across awaits: take turns with
                    # it (fairly: a cycle running back to back cannot starve us) rather than
                    # write into it, where a peer's garbage would doom the cycle's whole
                    # transaction and our batch could not roll back on its own. A free lock
                    # has no waiters, and the batch never awaits: then it simply runs (the
                    # lock's two scheduler passes saved; the channel's receive is one).
                    tips = session.tips_sent
                    if lock.locked() or storage.in_transaction:
                        async with lock:
                            while storage.in_transaction:  # someone writing without turns
                                idle = trio.Event()
                                storage.call_when_idle(idle.set)
                                await idle.wait()
                            out, kick = self._receive_batch(session, channel, data)
                    else:
                        out, kick = self._receive_batch(session, channel, data)
                    if session.tips_sent != tips:  # a held follow answered: not news to delay
                        channel.connection.hurry()
                    if out:
                        # queued at once unless the socket is backlogged (then wait for it)
                        if channel.can_send_now:
                            channel.send_now(out)
                        else:
                            await channel.send_many(out)
                    if kick:
                        self.announce(item)
                        self.remote_changes += 1
                        self._remote_event.set()
                        self._remote_event = trio.Event()
                nursery.cancel_scope.cancel()
        except* ChannelClosedError:
            pass  # the channel or connection ended; other sessions carry on
        finally:
            session.release()
            self._sessions[dk].discard(live)
            for other in self._sessions[dk]:
                other.wake.set()  # they may take over what this one had claimed
            if channel.overflowed:
                self._reopen_soon(channel.connection, item)

    def _reopen_soon(self, connection: Connection, item: Log) -> None:
        """Our end of ``item``'s channel overflowed (this session fell behind): open it again
        on the same connection, so the log keeps replicating with that peer; the new session
        starts with a sync, which resumes where the stored state is. The delay doubles with
        every overflow on this connection (10 ms up to 2 s) so a consumer that stays slow
        does not make the pair reopen in a tight loop."""
        if connection.is_closed:
            return
        pair = (connection, item.discovery_key)
        count = self._overflows.get(pair, 0)
        self._overflows[pair] = count + 1
        with contextlib.suppress(ChannelClosedError):  # the connection is ending anyway
            connection.spawn(self._reopen, connection, item, min(0.01 * 2**count, 2.0))

    async def _reopen(self, connection: Connection, item: Log, delay: float) -> None:
        await trio.sleep(delay)
        if connection.is_closed or connection.has_channel(channel_key(item)):
            return  # gone, or the peer opened it again first
        self.reopened += 1
        try:
            await self._open(connection, item)
        except LocalError:
            if not connection.has_channel(channel_key(item)):
                raise
            # the peer opened it again while ours waited for the old one to be forgotten

    @staticmethod
    def _receive_batch(
        session: LogSession, channel: Channel, first: bytes
    ) -> tuple[list[bytes], bool]:
        """Handle ``first`` and whatever else is already buffered (up to ``BATCH`` messages or
        ``BATCH_BYTES``) in one storage transaction: one commit per batch, not per answer.
        If the peer lied anywhere in the batch the whole batch rolls back; the peer is dropped
        and honest data stays."""
        out: list[bytes] = []
        stored = False
        claims = session.claims
        contiguous = claims.contiguous
        try:
            with session.log.storage.transaction():
                data: bytes | None = first
                count = size = 0
                while data is not None:
                    more, got = session.receive(data)
                    out += more
                    stored = stored or got
                    count += 1
                    size += len(data)
                    more_allowed = count < BATCH and size < BATCH_BYTES
                    data = channel.receive_nowait() if more_allowed else None
        except BaseException:
            # What this batch stored is gone again: nobody may count it as stored.
            claims.rewind(contiguous)
            raise
        return out, stored

    async def _push(self, live: _Live) -> None:
        while True:
            await live.wake.wait()
            live.wake = trio.Event()
            await self._send(live.channel, live.session.local_changed())

    @staticmethod
    async def _send(channel: Channel, messages: list[bytes]) -> None:
        await channel.send_many(messages)

    # -- waiting -----------------------------------------------------------------------------

    def complete(self, item: Log) -> bool:
        """Eager mode: every block up to the log's length is stored (as far as seen here)."""
        if item.writable:
            return True
        claims = self._claims[item.discovery_key]
        return claims.fork == item.fork and claims.contiguous >= item.length

    async def wait_for(self, item: Log, predicate: Callable[[Log], bool]) -> None:
        """Return once ``predicate(item)`` holds (checked after every change to ``item``)."""
        dk = item.discovery_key
        while not predicate(item):
            await self._updated[dk].wait()

    async def wait_remote_change(self, since: int) -> int:
        """Wait until ``remote_changes`` exceeds ``since``; returns its new value."""
        while self.remote_changes <= since:
            await self._remote_event.wait()
        return self.remote_changes

    async def fetch(self, item: Log, index: int) -> bytes:
        """Block ``index``, downloaded and verified if it is not stored yet (a sparse read).

        Waits until some peer that has it answers; callers bound it with their own timeout.
        """
        dk = item.discovery_key
        while not item.has(index):
            for live in list(self._sessions.get(dk, ())):
                try:
                    await self._send(live.channel, live.session.want(index, index + 1))
                except ChannelClosedError:
                    continue
            await self._updated[dk].wait()
        return item.get(index)


__all__ = ["Replicator"]
