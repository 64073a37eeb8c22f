"""trio adapter: a ``trio.abc.Stream`` becomes an encrypted, multiplexed ``Connection``.

The cores (``SecureConnection``, ``Mux``) decide everything; this module only moves bytes.
Each connection runs two tasks in its own cancel scope: a *reader* (socket -> cores -> events)
and a *writer* (cores' queued bytes -> socket). The reader never waits on the socket's send
side, so two peers that both write a lot cannot deadlock; senders wait only when more than
``HIGH_WATER`` bytes are queued (backpressure).

This is the single boundary where remote violations are caught: a :class:`ProtocolError` or a
broken socket ends *this* connection with a logged reason and wakes every channel waiting on
it with :class:`ChannelClosedError`; nothing propagates into the caller's nursery, and the
caller's own code is never cancelled by a misbehaving peer. That holds when the failure lands
in the same scheduler pass as a cancellation by the caller: the cancellation goes on, the
failure stays on the connection (``error``).

Channels requested by the peer are answered from ``protocols``: a registered protocol gets the
channel opened back and its handler run in the connection's task group; any other is rejected.

Dead peers: a third task, the *watcher*, sleeps until the core's ``deadline`` and calls its
``handle_timer`` (see ``connection``: the counters of reads and writes are compared once per
tick, so the reader and writer read no clock). When we sent nothing for
``keepalive_interval`` (5 s) it queues a mux ping, which the peer answers; when nothing at all
arrived for ``idle_timeout`` (20 s) the core raises TimedOutError("peer silent for 20 s") and
the connection ends like on any other failure: logged, channels closed with
ChannelClosedError, so sessions end and replication turns to the other peers. ``None``
disables either. On an autojumping MockClock the pings keep an idle in-process pair alive
(the peer answers before every task waits again, so the clock cannot jump past its answer).

``aclose`` is graceful: channels are closed, our direction ends with a secretstream FINAL
after everything queued before it, and we wait up to ``close_timeout`` for the peer's FINAL
before dropping the socket.

Per message the work is kept small, messages being nearly all the traffic: a received MESSAGE
frame on an open channel goes straight into its channel's buffer (``Mux.message_payload``, no
event object), our answers are encrypted once per batch of frames handled, the writer parks
as a bare task (no ``trio.Event`` per write) and the progress events are created only when
someone waits on them. News that may change again before the write (a log's length) is
computed by ``defer``-ed callbacks right before it, and a write of nothing else waits a
little while the process is busy, so several changes share one message (unless the write
carries data a peer waits for: ``hurry``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from .. import crypto
from ..errors import (
    AutobaseError,
    ChannelClosedError,
    LocalError,
    ProtocolError,
    TimedOutError,
)
from .connection import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_LIVENESS,
    Established,
    Event,
    Liveness,
    Message,
    PeerClosed,
    SecureConnection,
)
from .mux import (
    DEFAULT_MAX_CHANNELS,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    ChannelRequested,
    Half,
    Key,
    Mux,
    MuxEvent,
)

log = logging.getLogger("autobase_py.net")

RECEIVE_BYTES = 65536
CHANNEL_BUFFER = 1024
HIGH_WATER = 1024 * 1024
NEWS_SECONDS = 0.002  # a write of deferred news alone waits at most this long for more,
NEWS_PASSES = 64  # and at most this many scheduler passes, while other tasks are runnable
_NEWS_WAITING = trio.lowlevel.RunVar[int]("autobase_py.net.news_waiting", default=0)
DEFAULT_CLOSE_TIMEOUT = 5.0

ChannelHandler = Callable[["Channel"], Awaitable[None]]


class ChannelProtocol(Protocol):
    """A protocol that vets each channel the peer opens before answering it."""

    def accept(self, connection: Connection, key: Key, handshake: bytes) -> bytes | None:
        """Our OPEN handshake for this channel, or None to reject it. Raising ProtocolError
        closes the whole connection (a peer that proved nothing, for instance)."""
        ...

    async def run(self, channel: Channel) -> None: ...


ProtocolEntry = ChannelHandler | ChannelProtocol


class Channel:
    """One ``(protocol, name)`` channel: ``send``, ``receive`` (or ``async for``), ``aclose``."""

    def __init__(self, connection: Connection, key: Key) -> None:
        self.connection = connection
        self.key = key
        self.remote_handshake = b""
        self.opened = trio.Event()
        self.closed = trio.Event()
        self._settled = trio.Event()  # opened or closed
        self._send, self._receive = trio.open_memory_channel[bytes](CHANNEL_BUFFER)
        # closed by us because its consumer fell CHANNEL_BUFFER messages behind (its protocol
        # may open the name again: the buffered messages are still delivered first)
        self.overflowed = False

    @property
    def remote_public_key(self) -> bytes:
        return self.connection.remote_public_key

    async def send(self, data: bytes) -> None:
        if self.closed.is_set():
            raise ChannelClosedError(f"channel {self.key!r} is closed")
        self.connection._mux_send(self.key, data)
        await self.connection._flush()

    async def send_many(self, messages: list[bytes]) -> None:
        """``send`` each message in order, with one backpressure wait (and one scheduler
        checkpoint) for the lot rather than one per message; nothing for an empty list."""
        if not messages:
            return
        if self.closed.is_set():
            raise ChannelClosedError(f"channel {self.key!r} is closed")
        connection = self.connection
        connection._mux_send_many(self.key, messages)
        await connection._flush()

    @property
    def can_send_now(self) -> bool:
        """Open, and not so much queued for the socket that a sender should wait first."""
        return not self.closed.is_set() and not self.connection._backlogged

    def send_now(self, messages: list[bytes]) -> None:
        """Queue ``messages`` for the peer without waiting: for callers that checked
        ``can_send_now`` (no backpressure here). ChannelClosedError once closed."""
        if self.closed.is_set():
            raise ChannelClosedError(f"channel {self.key!r} is closed")
        self.connection._mux_send_many(self.key, messages)

    async def receive(self) -> bytes:
        """The next message; ChannelClosedError once the channel closed and is drained."""
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ChannelClosedError(f"channel {self.key!r} is closed") from None

    def receive_nowait(self) -> bytes | None:
        """The next message if one is already buffered, else None (also once closed)."""
        try:
            return self._receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        # A plain iterator rather than an async generator: nothing to finalize when the
        # consumer stops early.
        try:
            return await self.receive()
        except ChannelClosedError:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        if self.closed.is_set():
            return
        self._mark_closed()
        self.connection._mux_close(self.key)
        await trio.lowlevel.checkpoint()

    def _mark_opened(self, handshake: bytes) -> None:
        self.remote_handshake = handshake
        self.opened.set()
        self._settled.set()

    def _mark_closed(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._settled.set()
            self._send.close()
        if self.connection._channels.get(self.key) is self:
            del self.connection._channels[self.key]


class Connection:
    """A live connection; create it with :func:`open_connection` (or ``listen``/``connect``)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        core: SecureConnection,
        *,
        protocols: Mapping[str, ProtocolEntry],
        close_timeout: float,
        max_channels: int,
    ) -> None:
        self.stream = stream
        self.core = core
        self.mux = Mux(max_channels=max_channels, initiator=core.initiator)
        self.protocols = dict(protocols)
        self.close_timeout = close_timeout
        self.closed = trio.Event()
        self.error: BaseException | None = None
        self._scope = trio.CancelScope()
        self._tasks: trio.Nursery | None = None
        self._channels: dict[Key, Channel] = {}
        self._writer_task: trio.lowlevel.Task | None = None  # the writer, while it waits
        self._deferred: list[Callable[[], None]] = []  # run right before the next write
        self._urgent = False  # the next write carries data a peer waits for: no news delay
        self._handlers = 0  # handlers of channels the peer opened, still running
        self._handlers_done: trio.Event | None = None  # set when they all ended, if awaited
        # Set and dropped after every socket write / every frame that may change channel
        # states; created only when someone waits (most writes and frames have no waiter).
        self._progress: trio.Event | None = None
        self._mux_progress: trio.Event | None = None
        self._peer_closed = trio.Event()
        self._stream_closed = False

    # -- facts -------------------------------------------------------------------------------

    @property
    def remote_public_key(self) -> bytes:
        return self.core.remote_public_key

    @property
    def handshake_hash(self) -> bytes:
        return self.core.handshake_hash

    @property
    def initiator(self) -> bool:
        return self.core.initiator

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    def spawn(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run a task that lives as long as this connection (cancelled when it ends)."""
        if self._tasks is None or self.is_closed:
            raise ChannelClosedError("connection is closed")
        self._tasks.start_soon(async_fn, *args)

    def has_channel(self, key: Key) -> bool:
        return key in self._channels

    def abort(self, reason: AutobaseError) -> None:
        """End the connection now because of ``reason`` (logged); no graceful close."""
        if self.is_closed:
            return
        log.warning("closing connection to %s: %s", _short(self.core), reason)
        self.error = reason
        self._finish()
        self._scope.cancel()

    # -- channels ----------------------------------------------------------------------------

    async def open_channel(self, key: Key, handshake: bytes = b"") -> Channel:
        """Open a channel and wait until the peer opens its half (ChannelClosedError if it
        refuses or the connection ends)."""
        if self.is_closed:
            raise ChannelClosedError("connection is closed")
        if key in self._channels:
            raise LocalError(f"channel {key!r} is already open")
        # A previous incarnation we closed (or refused) is forgotten once the peer answers our
        # close; the protocol guarantees that answer, so wait for it instead of failing.
        while self.mux.state(key)[0] is Half.CLOSED:
            if self.is_closed:
                raise ChannelClosedError("connection is closed")
            if self._mux_progress is None:
                self._mux_progress = trio.Event()
            await self._mux_progress.wait()
        if key in self._channels:
            raise LocalError(f"channel {key!r} is already open")
        channel = Channel(self, key)
        events = self.mux.open(key, handshake)  # LocalError before registering
        self._channels[key] = channel
        self._handle_mux_events(events)
        await self._flush()
        await channel._settled.wait()
        if not channel.opened.is_set() or channel.closed.is_set():
            raise ChannelClosedError(f"channel {key!r} was refused or the connection ended")
        return channel

    def _mux_send(self, key: Key, data: bytes) -> None:
        if self.is_closed:
            raise ChannelClosedError("connection is closed")
        self.mux.send(key, data)
        self._pump()

    def _mux_send_many(self, key: Key, messages: list[bytes]) -> None:
        if not messages:
            return
        if self.is_closed:
            raise ChannelClosedError("connection is closed")
        send = self.mux.send
        try:
            for data in messages:
                send(key, data)
        finally:
            self._pump()

    def _mux_close(self, key: Key) -> None:
        if self.is_closed:
            return
        self.mux.close(key)
        self._pump()

    # -- moving bytes ------------------------------------------------------------------------

    def _pump(self) -> None:
        """Move mux frames into the encrypted stream (synchronously, so order is kept)."""
        frames = self.mux.frames_to_send()
        core = self.core
        if frames and core.can_send:
            send = core.send
            for frame in frames:
                send(frame)
        if core.pending_bytes:
            self._wake_writer()

    def defer(self, callback: Callable[[], None], *, urgent: bool = False) -> None:
        """Run ``callback`` (once) right before the next socket write, after the writer let
        other tasks add to it: news that may change again meanwhile (a log's length, say) is
        computed once per write rather than once per change. With nothing else to write, a
        busy process waits a little longer for more (``_news_can_wait``), unless some
        deferred news is ``urgent`` (:meth:`hurry`)."""
        if self.is_closed:
            return
        self._deferred.append(callback)
        if urgent:
            self._urgent = True
        self._wake_writer()

    def hurry(self) -> None:
        """The next write carries data a peer is waiting for (the answer to a request it left
        with us): it goes out after the writer's one pass, without the news delay (a delay
        under way ends at its next pass)."""
        self._urgent = True

    def _is_urgent(self) -> bool:
        return self._urgent

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for callback in deferred:
            callback()

    def _wake_writer(self) -> None:
        task = self._writer_task
        if task is not None:
            self._writer_task = None
            trio.lowlevel.reschedule(task)

    def _writer_abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._writer_task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _made_progress(self) -> None:
        event = self._progress
        if event is not None:
            self._progress = None
            event.set()

    def _mux_changed(self) -> None:
        event = self._mux_progress
        if event is not None:
            self._mux_progress = None
            event.set()

    async def _wait_progress(self) -> None:
        if self._progress is None:
            self._progress = trio.Event()
        await self._progress.wait()

    @property
    def _backlogged(self) -> bool:
        return self.core.pending_bytes > HIGH_WATER

    async def _flush(self) -> None:
        """Backpressure for senders: wait while too much is queued for the socket."""
        while self.core.pending_bytes > HIGH_WATER and not self.is_closed:
            await self._wait_progress()
        await trio.lowlevel.checkpoint()
        if self.is_closed:
            raise ChannelClosedError("connection is closed")

    async def _writer(self) -> None:
        """Sends whatever is queued, everything at once; parks (no event object) while nothing
        is queued. Woken, it lets the tasks already runnable go first (one scheduler pass), so
        the answers of every session woken by the same arrival share one socket write: about
        a fifth fewer writes (and reads at the peer) in the live three-indexer benchmark. The
        ``defer``-ed callbacks run right before the write; a write of nothing else may wait
        longer while the process is busy (``_news_can_wait``)."""
        core, stream = self.core, self.stream
        while True:
            if not core.pending_bytes and not self._deferred:
                self._writer_task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._writer_abort)
                await trio.lowlevel.cancel_shielded_checkpoint()
            if self._deferred:
                if not core.pending_bytes and not self._urgent:
                    # answers queued meanwhile go in this write
                    await _news_can_wait(self._is_urgent)
                self._run_deferred()
            data = core.data_to_send()
            self._urgent = False
            if data:
                await stream.send_all(data)
            self._made_progress()

    async def _watch(self) -> None:
        """Liveness: tick at the core's deadline; ping when it says a keepalive is due. The
        core's TimedOutError (a silent peer) ends the connection through ``_run``."""
        core = self.core
        while (deadline := core.deadline) is not None:
            await trio.sleep_until(deadline)
            if core.handle_timer(trio.current_time()) and self.mux.ping():
                self._pump()

    async def _reader(self) -> None:
        while not self._peer_closed.is_set():
            data = await self.stream.receive_some(RECEIVE_BYTES)
            self._handle_events(self.core.receive_data(data))
        # The peer ended its direction: our FINAL is queued (see _handle_events); let the
        # writer deliver it, then the connection is over.
        while self.core.pending_bytes and not self.is_closed:
            await self._wait_progress()

    async def _run(self, pending: list[Event], task_status: trio.TaskStatus[None]) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as tasks:
                    self._tasks = tasks
                    self._handle_events(pending)
                    tasks.start_soon(self._writer)
                    if self.core.deadline is not None:
                        tasks.start_soon(self._watch)
                    task_status.started()
                    await self._reader()
                    await self._wait_handlers()
                    tasks.cancel_scope.cancel()
        except BaseException as exc:
            reason = _connection_failure(exc)
            if reason is None:
                raise
            if isinstance(reason, ProtocolError) or not isinstance(reason, ChannelClosedError):
                log.warning("closing connection to %s: %s", _short(self.core), reason)
            self.error = reason
            # A cancellation of whoever runs us that landed in the same moment (the owner
            # closing as the peer timed out, say) goes on; the failure itself stays here.
            cancelled = _cancellation(exc)
            if cancelled is not None:
                raise cancelled from None
        finally:
            self._finish()
            with trio.CancelScope(shield=True):
                await self._close_stream()

    def _handle_events(self, events: list[Event]) -> None:
        """Apply what the peer sent: messages on open channels straight to their channel (the
        mux's short cut), other frames through the mux's events; then queue our answers."""
        message_payload = self.mux.message_payload
        channels = self._channels
        for event in events:
            if type(event) is Message:
                fast = message_payload(event.data)
                if fast is None:
                    self._apply_mux_events(self.mux.receive_frame(event.data))
                    self._mux_changed()
                else:
                    channel = channels.get(fast[0])
                    if channel is not None:
                        self._deliver(channel, fast[1])
            elif isinstance(event, PeerClosed):
                self._pump()  # answers to earlier frames go before our FINAL
                self._peer_closed.set()
                self._close_channels()
                if not self.core.local_closed:
                    self.core.close()  # answer with our FINAL so the peer can finish too
                    self._wake_writer()
            elif isinstance(event, Established):  # pragma: no cover - consumed by handshake
                pass
        self._pump()

    def _deliver(self, channel: Channel, data: bytes) -> None:
        try:
            channel._send.send_nowait(data)
        except trio.WouldBlock:
            # A consumer that does not keep up loses its channel, not the node.
            log.warning("channel %r overflowed; closing it", channel.key)
            channel.overflowed = True
            channel._mark_closed()
            self.mux.close(channel.key)

    def _handle_mux_events(self, events: list[MuxEvent]) -> None:
        self._apply_mux_events(events)
        self._pump()
        self._mux_changed()

    def _apply_mux_events(self, events: list[MuxEvent]) -> None:
        for event in events:
            if isinstance(event, ChannelMessage):
                channel = self._channels.get(event.key)
                if channel is not None:
                    self._deliver(channel, event.data)
            elif isinstance(event, ChannelOpened):
                channel = self._channels.get(event.key)
                if channel is not None:
                    channel._mark_opened(event.handshake)
            elif isinstance(event, ChannelRequested):
                self._answer_request(event)
            elif isinstance(event, ChannelClosed):
                channel = self._channels.get(event.key)
                if channel is not None:
                    channel._mark_closed()

    def _answer_request(self, event: ChannelRequested) -> None:
        entry = self.protocols.get(event.key[0])
        handshake: bytes | None = b""
        if entry is not None and not callable(entry):
            handshake = entry.accept(self, event.key, event.handshake)
        if entry is None or handshake is None or self._tasks is None or self.is_closed:
            log.info("refusing channel %r from %s", event.key, _short(self.core))
            self.mux.reject(event.key)
            return
        handler = entry if callable(entry) else entry.run
        channel = Channel(self, event.key)
        self._channels[event.key] = channel
        self.mux.open(event.key, handshake)
        channel._mark_opened(event.handshake)
        self._tasks.start_soon(self._run_handler, handler, channel)

    async def _run_handler(self, handler: ChannelHandler, channel: Channel) -> None:
        self._handlers += 1
        try:
            await handler(channel)
        except ChannelClosedError:
            pass
        finally:
            self._handlers -= 1
            if not self._handlers and self._handlers_done is not None:
                self._handlers_done.set()
            with trio.CancelScope(shield=True):
                await channel.aclose()

    async def _wait_handlers(self) -> None:
        """The peer ended its direction (its FINAL came after everything it sent): give the
        handlers of the channels it opened, now closed, up to ``close_timeout`` to consume
        what is still buffered, rather than cancelling them halfway through it."""
        if self._handlers and not self.is_closed:
            self._handlers_done = trio.Event()
            with trio.move_on_after(self.close_timeout):
                await self._handlers_done.wait()

    # -- ending ------------------------------------------------------------------------------

    def _close_channels(self) -> None:
        for channel in list(self._channels.values()):
            channel._mark_closed()

    def _finish(self) -> None:
        self._deferred.clear()
        self._close_channels()
        self._peer_closed.set()
        self.closed.set()
        self._made_progress()
        self._mux_changed()

    async def _close_stream(self) -> None:
        if not self._stream_closed:
            self._stream_closed = True
            await self.stream.aclose()

    async def aclose(self) -> None:
        """Close gracefully: close channels, send FINAL, wait for the peer's, drop the socket."""
        with trio.CancelScope(shield=True):
            if not self.closed.is_set():
                for key in list(self._channels):
                    self.mux.close(key)
                self._close_channels()
                self._pump()
                self.core.close()
                self._wake_writer()
                with trio.move_on_after(self.close_timeout):
                    await self._peer_closed.wait()
            self._finish()
            self._scope.cancel()
            await self._close_stream()


async def _news_can_wait(urgent: Callable[[], bool]) -> None:
    """A write would carry only ``defer``-ed news (no answer is queued, nothing a peer waits
    for by request): while the process is busy, wait for more changes to tell in the same
    write. Returns at once if no other task is runnable; else after two scheduler passes in
    a row that found none (a task running after us in a pass is not seen in that pass, so
    one empty look proves little), at most ``NEWS_PASSES`` passes or ``NEWS_SECONDS``.
    Writers waiting here do not count as work for each other. In the live three-indexer
    benchmark: half the syncs and socket writes. Answers and RPC are not delayed, and the wait
    ends once ``urgent()`` (data a peer waits for was queued meanwhile)."""
    statistics = trio.lowlevel.current_statistics
    if statistics().tasks_runnable <= _NEWS_WAITING.get():
        return
    _NEWS_WAITING.set(_NEWS_WAITING.get() + 1)
    try:
        deadline = trio.current_time() + NEWS_SECONDS
        quiet = 0
        for _ in range(NEWS_PASSES):
            await trio.lowlevel.cancel_shielded_checkpoint()
            if urgent():
                return
            if statistics().tasks_runnable >= _NEWS_WAITING.get():
                quiet = 0
            else:
                quiet += 1
                if quiet == 2:
                    return
            if trio.current_time() > deadline:
                return
    finally:
        _NEWS_WAITING.set(_NEWS_WAITING.get() - 1)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _connection_failure(exc: BaseException) -> AutobaseError | None:
    """The reason a connection ends, when ``exc`` is about this connection (a peer's
    violation or a broken socket), possibly together with a cancellation that arrived at the
    same moment; None when it is anything else (a bug, or only a cancellation)."""
    reason: AutobaseError | None = None
    for leaf in _leaves(exc):
        if isinstance(leaf, AutobaseError):
            reason = reason or leaf
        elif isinstance(leaf, (trio.BrokenResourceError, trio.ClosedResourceError)):
            reason = reason or ChannelClosedError(f"connection lost: {leaf!r}")
        elif not isinstance(leaf, trio.Cancelled):
            return None
    return reason


def _cancellation(exc: BaseException) -> BaseException | None:
    """The part of ``exc`` that is a cancellation (for its cancel scope to catch), if any."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[0]
    return exc if isinstance(exc, trio.Cancelled) else None


def _short(core: SecureConnection) -> str:
    try:
        return core.remote_public_key.hex()[:16]
    except LocalError:
        return "(handshaking peer)"


async def handshake(
    stream: trio.abc.Stream,
    key_pair: crypto.KeyPair,
    *,
    initiator: bool,
    expected_remote_key: bytes | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    liveness: Liveness = DEFAULT_LIVENESS,
) -> tuple[SecureConnection, list[Event]]:
    """Run the handshake on ``stream``; returns the core and events that arrived with it.

    Raises HandshakeError/ProtocolError on a bad peer and TimedOutError past the deadline.
    """
    core = SecureConnection(
        key_pair,
        initiator=initiator,
        now=trio.current_time(),
        expected_remote_key=expected_remote_key,
        handshake_timeout=handshake_timeout,
        liveness=liveness,
    )
    events: list[Event] = []
    deadline = core.deadline if core.deadline is not None else math.inf
    with trio.move_on_at(deadline):
        try:
            if initiator:
                await stream.send_all(core.data_to_send())
            while core.result is None:
                data = await stream.receive_some(RECEIVE_BYTES)
                events = core.receive_data(data)
                out = core.data_to_send()
                if out:
                    await stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ProtocolError(f"connection broken during the handshake: {exc!r}") from exc
        return core, [e for e in events if not isinstance(e, Established)]
    core.handle_timer(trio.current_time())
    raise TimedOutError("handshake timed out")  # pragma: no cover - handle_timer raised


@asynccontextmanager
async def open_connection(
    stream: trio.abc.Stream,
    key_pair: crypto.KeyPair,
    *,
    initiator: bool,
    expected_remote_key: bytes | None = None,
    protocols: Mapping[str, ProtocolEntry] | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    max_channels: int = DEFAULT_MAX_CHANNELS,
    liveness: Liveness = DEFAULT_LIVENESS,
) -> AsyncIterator[Connection]:
    """Handshake on ``stream`` and yield the live connection; closes it gracefully on exit.

    On a failed handshake the stream is closed and the error (HandshakeError, ProtocolError,
    TimedOutError) is raised. ``liveness`` sets the dead-peer detection (see above; pass
    ``LIVENESS_OFF`` to turn it off): a silent peer ends the connection with ``error`` a
    TimedOutError.
    """
    try:
        core, pending = await handshake(
            stream,
            key_pair,
            initiator=initiator,
            expected_remote_key=expected_remote_key,
            handshake_timeout=handshake_timeout,
            liveness=liveness,
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        conn = Connection(
            stream,
            core,
            protocols=protocols or {},
            close_timeout=close_timeout,
            max_channels=max_channels,
        )
        await nursery.start(conn._run, pending)
        try:
            yield conn
        except BaseException as exc:
            # Re-raised below, outside the task group, so callers see their own exception
            # rather than an ExceptionGroup wrapping it.
            if isinstance(exc, trio.Cancelled):
                raise  # the task group and the cancel scopes handle their own
            body_error = exc
        finally:
            await conn.aclose()
    if body_error is not None:
        raise body_error


__all__ = [
    "Channel",
    "ChannelHandler",
    "ChannelProtocol",
    "Connection",
    "ProtocolEntry",
    "handshake",
    "open_connection",
]
