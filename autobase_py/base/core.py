"""Autobase: many writers' oplogs -> one linearized order -> one deterministic view.

Theory of operation
===================

Logs. Every node has a writable *local* oplog (``store.get(name="local")``) and a local
*view* log (``store.get(name="view")``) that ``open_view`` turns into the user's view object.
Other writers' oplogs are replicas in the same store; whatever fills them (the in-process
``autobase_py.testing.sync`` helper or network replication) works at the store level, and the
base only reads them in ``update()``.

Cycle. ``update()`` and ``append()`` run a *cycle* under a lock (several when the drain is
long: see *Bounded cycles*), each inside ONE storage transaction: (1) *ingest*: decode new
oplog blocks of the writers in the applied membership (and of writers referenced as heads)
into the linearizer, in causal order; (2) *drain*: ask the
linearizer how the order changed (``update(settle=True)``), roll the view back (truncate the
view log to the length recorded for the first undone position, restore the membership
snapshot) and apply the new nodes batch by batch through the user's ``apply``; after each
commit that confirmed values, compute the checkpoint, sign it if this node is in the
confirming indexer set, and hand a confirmed indexer-set change to the linearizer
(``set_indexers``) before anything else is confirmed; (3) *persist*: the linearizer state and
its new round steps (``round_steps.py``), the applied-order records of the tip, the membership
snapshots, pending checkpoint signatures and certificates. The transaction then commits:
oplog appends, view blocks, system state and applied-order records are durable together or
not at all, so ``kill -9`` at any instant leaves a state that equals a fresh replay of the
persisted order, and reopening resumes from the records without replaying history.

Bounded cycles. ``update()`` and ``append()`` apply at most ``CYCLE_NODES`` (256) order
positions per cycle (whole batches; always at least up to the confirmed length). What the
linearizer returned beyond that waits in ``_pending`` and the call runs another cycle, taking
its turn on the locks again, until nothing is pending (``append`` appends in the last one).
Each cycle is still one transaction leaving a state equal to a replay of a prefix of the
order. In between, replication stores what arrived and readers get in, and the next cycle's
ingest may reorder pending nodes, which are then dropped instead of applied and undone. In
the live three-indexer benchmark at 100 values per append this cut apply calls per value from
1.65-2.33 to 1.14-1.63 (``docs/base.md``): one long catch-up used to hold the storage for
seconds, so nothing was stored or acked meanwhile and the tips, and the reorders, grew.

Failure. If ``apply`` raises or calls ``host.interrupt``, the transaction rolls back (nothing
of the cycle is stored), the base stops with an ``error``/``interrupted`` event, and every
later call raises :class:`ApplyError`; reopen after fixing the cause. A writer whose oplog
holds an undecodable or structurally invalid block is reported (``error`` event, ``status``)
and skipped from that block on; everything else keeps working.

Lengths (one name each, everywhere): ``applied_length`` = nodes of the order applied to the
local view (optimistic: includes the tip); ``confirmed_length`` = the quorum-confirmed
prefix; ``signed_length`` = the confirmed length covered by the newest quorum certificate.
All count order positions, acks included.

Checkpoints (``checkpoint.py`` for the formats, ``ledger.py`` for the bookkeeping). Boundaries
are deterministic: a checkpoint covers the confirmed prefix up to its last value node. Every
peer computes the same checkpoint at the same boundary; indexers of the confirming set sign it
and carry the signature in their next oplog node (or in a checkpoint ack,
``publish_checkpoints``). Any peer assembles a certificate once a majority of that set signed;
a boundary where the indexer set changed becomes a link of the chain that lets a reader verify
from the registry key alone.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

from .. import encoding, ids
from ..crypto import discovery_key
from ..errors import (
    ApplyError,
    ClosedError,
    DecodeError,
    InvalidNodeError,
    LocalError,
    NotWritableError,
)
from ..linearizer import Linearizer, Node
from ..linearizer.node import trusted_node
from ..log import Log
from ..storage_trio import write_lock
from ..store import Store
from . import round_steps, tip
from .checkpoint import Certificate, Checkpoint
from .events import Event, EventHub
from .host import ApplyHost, ApplyNode
from .ledger import CERTIFICATE_KEY, CheckpointLedger
from .oplog import OplogBlock, decode_block, encode_block
from .system import Membership
from .tip import Record, TipRows

V = TypeVar("V")
ApplyFn = Callable[[list[ApplyNode], V, ApplyHost], Awaitable[None]]
OpenView = Callable[[Log], V]

_META = b"base/meta"
# The records written every cycle: round steps (``base/steps/…``) and tip runs (``base/tips/…``)
# grow at the right end of their ranges, and the state and certificate records sort after
# both ("~" follows every letter), so they share the page those rows dirty: one WAL frame
# less per commit (7.1 -> 6.1 for a single writer). Bases written before kept them at
# ``base/state`` and ``base/certificate``; ``_restore`` moves them.
_STATE = b"base/~state"
_LEGACY_RECORDS = ((b"base/state", _STATE), (b"base/certificate", CERTIFICATE_KEY))
_MEMBERSHIP = b"base/membership/"  # + u64be(order length): membership after that many nodes
ROUND_WINDOW = round_steps.WINDOW  # round steps per writer the linearizer keeps in memory
_BE64 = struct.Struct(">Q")
FORMAT = 1
INGEST_RUN = 256  # oplog blocks read per query while ingesting
MAX_ACKS_PER_CYCLE = 4  # should_ack turns false after our ack; this only guards against bugs
CYCLE_NODES = 256  # order positions ``update``/``append`` apply per cycle before taking turns


def _unit_end(nodes: Sequence[Node], count: int) -> int:
    """The smallest ``n >= count`` such that ``nodes[:n]`` ends with a whole batch (0 for
    ``count <= 0``)."""
    if count <= 0:
        return 0
    n = count
    while n < len(nodes) and nodes[n - 1].batch != 1:
        n += 1
    return n


class _StopError(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason



class _Turn:
    """``async with _Turn(lock):`` one schedule point (the cancellation check of the call),
    then the lock: taken at once when free, else waited for. ``async with lock`` would yield
    a second time, and a cycle takes two locks; the saved passes through the scheduler are
    ~2 % of a one-value append. ``checkpoint=False`` for a lock taken right after another."""

    __slots__ = ("_checkpoint", "_lock")

    def __init__(self, lock: trio.Lock, *, checkpoint: bool = True) -> None:
        self._lock = lock
        self._checkpoint = checkpoint

    @trio.lowlevel.enable_ki_protection  # as trio's own lock manager: no Ctrl-C in between
    async def __aenter__(self) -> None:
        if self._checkpoint:
            await trio.lowlevel.checkpoint()
        try:
            self._lock.acquire_nowait()  # fair: a released lock passes straight to a waiter
        except trio.WouldBlock:
            await self._lock.acquire()

    @trio.lowlevel.enable_ki_protection
    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


class Autobase(Generic[V]):
    """A multi-writer base over one store. Open with :meth:`open`."""

    def __init__(
        self, store: Store, key: bytes, apply: ApplyFn[V], open_view: OpenView[V]
    ) -> None:
        self.store = store
        self.storage = store.storage
        self.key = key
        self.local_log = store.get(name="local")
        self.local_key = self.local_log.key
        pair = self.local_log.key_pair
        if pair is None:
            raise LocalError("the local oplog has no key pair")
        self.view_log = store.get(name="view")
        # the view is a deterministic function of the oplogs: rebuilt, never trusted by
        # its own signature (readers check it against a certificate's tree hash), so its
        # appends need no fsync of their own (the oplog's do) and no signature
        self.view_log.durable_appends = False
        self.view_log.signed_appends = False
        self.view: V = open_view(self.view_log)
        self._apply_fn = apply
        self._lock = trio.Lock()
        self._events = EventHub()
        self._wakeup = trio.Event()
        self._failed: str | None = None
        self._closed = False
        self.bad_writers: dict[bytes, str] = {}
        self._wanted: dict[bytes, int] = {}
        # apply or a confirmed indexer change may have added a writer whose oplog already
        # holds blocks: the cycle ingests again before it ends (``_drain_all``)
        self._writers_grew = False
        # applied state
        self.membership = Membership.genesis(key)
        self._memberships: list[tuple[int, Membership]] = [(0, self.membership.copy())]
        self._records: list[Record] = []  # positions [floor, applied_length)
        # nodes the linearizer returned after the applied ones, left for the next cycle
        # (a cycle applies at most CYCLE_NODES of a long drain; see ``_drain``)
        self._pending: list[Node] = []
        self._tip_rows = TipRows()  # the stored runs of records (``tip.py``)
        self._dirty_from = 0  # records from here on may differ from the stored ones
        self._floor_view_length = 0
        self._value_end = 0
        self._applied_length = 0
        self._steps = round_steps.RoundStepStore(self.storage)
        self.lin = Linearizer(
            [key], keep_history=False, round_window=ROUND_WINDOW, round_lookup=self._steps.lookup
        )
        self.ledger = CheckpointLedger(key, self.storage, pair, self.local_key, self._events)
        self._was_indexer = False
        self._was_writable = False
        # Ack policy. An indexer's value nodes vote like acks, so ``update`` does not ack the
        # moment ``should_ack`` turns true: it sets ``ack_due`` and acks on the next cycle
        # unless this node appended a value first. Whoever drives the base must keep cycles
        # coming while ``ack_due`` (``flush`` acks at once; the network loop acks after a
        # short jittered delay; ``testing.sync.converge`` updates until quiet).
        # ``eager_acks = True`` acks within the same cycle.
        self.ack_due = False
        self.eager_acks = False
        self._local_grew = trio.Event()
        # blocks this base appended in the running cycle, by index: ingest takes them as they
        # are instead of reading and decoding them back (cleared at the end of every cycle)
        self._own_blocks: dict[int, OplogBlock] = {}

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        store: Store,
        bootstrap: bytes | str | None = None,
        *,
        apply: ApplyFn[V],
        open_view: OpenView[V],
    ) -> Autobase[V]:
        """Open (or create) the base in ``store``; ``bootstrap`` is the registry key to join."""
        local_key = store.get(name="local").key
        meta = store.storage.get(_META)
        if meta is not None:
            stored = encoding.expect_map(encoding.decode(meta), "base meta")
            key = encoding.field(stored, "key", bytes, "base meta")
            if bootstrap is not None and ids.normalize(bootstrap) != key:
                raise LocalError(
                    f"this storage already holds base {ids.encode(key)}, not "
                    f"{ids.encode(ids.normalize(bootstrap))}"
                )
        else:
            key = local_key if bootstrap is None else ids.normalize(bootstrap)
        base = cls(store, key, apply, open_view)
        if meta is None:
            with store.storage.transaction():
                store.storage.put(_META, encoding.encode({"v": FORMAT, "key": key}))
                base._put_membership(0, base.membership)
                base._steps.save(base.lin.take_round_steps())
                base._persist()
        else:
            base._restore()
        base._log(key)
        base._was_indexer = base.is_indexer
        base._was_writable = base.writable
        return base

    def _restore(self) -> None:
        storage = self.storage
        legacy = [(o, n, v) for o, n in _LEGACY_RECORDS if (v := storage.get(o)) is not None]
        if legacy:
            with storage.transaction():
                for old, new, value in legacy:
                    storage.put(new, value)
                    storage.delete(old)
        raw = self.storage.get(_STATE)
        if raw is None:
            raise DecodeError("base: storage has a base but no state record")
        state = encoding.expect_map(encoding.decode(raw), "base state")
        self._floor_view_length = encoding.field(state, "view_length", int, "base state")
        self._value_end = encoding.field(state, "value_end", int, "base state")
        self.ledger.restore(state)
        first, self._records, self._tip_rows = tip.load(storage)
        self._memberships = [
            (_BE64.unpack(k[len(_MEMBERSHIP) :])[0], Membership.from_wire(encoding.decode(v)))
            for k, v in self.storage.iterate(_MEMBERSHIP)
        ]
        self.membership = self._memberships[-1][1].copy()
        applied_tip = [(r.writer, r.length) for r in self._records]
        lin_state = encoding.expect_map(state["lin"], "linearizer state")
        epoch = encoding.field(lin_state, "epoch", int, "linearizer state")
        indexers = encoding.field(lin_state, "indexers", list, "linearizer state")
        self._steps.indexer_count = len(indexers)
        writers = [bytes(w) for w, _ in lin_state.get("writers", [])]
        rows = self._steps.newest(epoch, writers, ROUND_WINDOW)
        self.lin = Linearizer.restore(
            lin_state,
            keep_history=False,
            applied_tip=applied_tip,
            round_steps=rows,
            round_window=ROUND_WINDOW,
            round_lookup=self._steps.lookup,
        )
        confirmed = self.lin.confirmed_length
        if first is None:
            self._tip_rows = TipRows(confirmed)
        elif first != confirmed:
            raise DecodeError(
                f"base: the stored tip starts at position {first}, not at the confirmed "
                f"length {confirmed}"
            )
        self._applied_length = confirmed + len(self._records)
        self._dirty_from = self._applied_length
        for writer in self.membership.writers:
            self._log(writer)

    # --- public properties ------------------------------------------------------------------

    @property
    def discovery_key(self) -> bytes:
        return discovery_key(self.key)

    @property
    def writable(self) -> bool:
        return self.membership.is_writer(self.local_key)

    @property
    def is_indexer(self) -> bool:
        return self.local_key in self.lin.indexers

    @property
    def applied_length(self) -> int:
        return self._applied_length

    @property
    def confirmed_length(self) -> int:
        return self.lin.confirmed_length

    @property
    def confirmed_view_length(self) -> int:
        """View log length after the confirmed prefix (what a quorum has agreed on)."""
        return self._floor_view_length

    @property
    def signed_length(self) -> int:
        return self.ledger.signed_length

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The newest confirmed checkpoint this base computed."""
        return self.ledger.checkpoint

    @property
    def certificate(self) -> Certificate | None:
        """The newest quorum certificate this base holds."""
        return self.ledger.certificate

    @property
    def chain(self) -> list[Certificate]:
        """Certificates of the indexer-set changes, oldest first (see ``verify_chain``)."""
        return self.ledger.chain

    @property
    def indexers(self) -> list[bytes]:
        """The indexer set the quorum currently uses (changes act once confirmed)."""
        return self.lin.indexers

    @property
    def failed(self) -> str | None:
        return self._failed

    def events(self) -> AsyncIterator[Event]:
        return self._events.subscribe()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[V]:
        """``async with base.reading() as view:`` reads the view between two cycles.

        A cycle spans awaits (a bee flush may yield to other tasks), so a task that
        reads ``view`` while one runs may see it half-way: rolled back for an undo and partly
        re-applied, or holding writes the cycle could still roll back. Inside ``reading()``
        appends and updates wait, and the view is exactly what the last committed cycle left.
        Keep such reads short: writers wait for them."""
        async with _Turn(self._lock):
            self._check_usable()
            yield self.view

    @property
    def recent_events(self) -> list[Event]:
        return list(self._events.history)

    def writer_keys(self) -> list[bytes]:
        """Oplogs this base reads: its writers, the quorum's indexers (a removed indexer still
        votes until its removal is confirmed), and writers it needs as dependencies."""
        keys = set(self.membership.writers) | set(self.lin.indexers) | set(self._wanted)
        return sorted(keys | {self.key})

    def wakeup(self) -> None:
        """Tell the base that replication brought data (wakes ``flush``)."""
        self._wakeup.set()

    async def wait_local_append(self, since: int) -> int:
        """Wait until the local oplog is longer than ``since`` (whoever appended: ``append``,
        an ack inside ``update``/``flush``, a checkpoint ack); returns its length. Replication
        uses it to announce every local block at once."""
        while self.local_log.length <= since:
            if self._closed:
                raise ClosedError("the base is closed")
            await self._local_grew.wait()
        return self.local_log.length

    # --- the cycle --------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError("the base is closed")
        if self._failed is not None:
            raise ApplyError(f"the base stopped: {self._failed}")

    async def update(self) -> None:
        """Take in what replication brought, apply it, and ack if that helps confirmation.

        A long drain (a peer catching up, a large reorder) runs as several cycles of at most
        ``CYCLE_NODES`` order positions, each its own transaction, and other tasks take
        turns between them: replication stores what arrives, acks go out, and nodes that
        the new arrivals reorder are not applied only to be undone. Returns once everything
        taken in is applied."""
        await self._bounded_cycles(None)

    async def append(self, value: bytes | Sequence[bytes]) -> int:
        """Append one value or an atomic batch; returns once durable and applied locally.

        Returns the local oplog length after the append.
        """
        values = [value] if isinstance(value, (bytes, bytearray)) else list(value)
        if not values:
            raise LocalError("append needs at least one value")
        if not all(isinstance(v, (bytes, bytearray)) for v in values):
            raise LocalError("values must be bytes")
        await self._bounded_cycles([bytes(v) for v in values])
        return self.local_log.length

    async def ack(self) -> bool:
        """Append an ack now if one would help confirmation; True if one was appended."""
        async with _Turn(self._lock):
            self._check_usable()
            before = self.local_log.length
            await self._cycle(None, ack_now=True)
            return self.local_log.length > before

    @property
    def checkpoints_pending(self) -> bool:
        """This indexer holds checkpoint signatures no oplog node carries yet."""
        return bool(self.ledger.pending) and self.writable

    async def publish_checkpoints(self) -> bool:
        """Append an ack carrying checkpoint signatures nobody has seen yet (indexers only)."""
        async with _Turn(self._lock):
            self._check_usable()
            if not self.checkpoints_pending:
                return False
            await self._cycle([], force_ack=True)
            return True

    @property
    def unconfirmed_values(self) -> int:
        """Value nodes applied locally but not confirmed yet (trailing acks do not count)."""
        return sum(1 for r in self._records if r.is_value)

    async def flush(self) -> None:
        """Wait until every value node this base knows is confirmed.

        Acks at the end of the order stay unconfirmed until later rounds and are not waited
        for. Needs the other indexers: with fewer than a majority reachable it waits until
        they return (wrap it in a trio timeout to bound it).
        """
        while True:
            self._wakeup = trio.Event()
            await self.update()
            if self.ack_due:
                await self.ack()
            if not self.unconfirmed_values:
                return
            await self._wakeup.wait()

    async def _bounded_cycles(self, values: list[bytes] | None) -> None:
        """Cycles of at most ``CYCLE_NODES`` applied positions, each taking its turn on the
        lock, until one finds nothing left pending; that one appends ``values`` (if any, and
        only while this node is a writer)."""
        while True:
            async with _Turn(self._lock):
                self._check_usable()
                if values is not None and not self.writable:
                    raise NotWritableError(
                        f"{ids.encode(self.local_key)} is not a writer of this base"
                    )
                if await self._cycle(values, budget=CYCLE_NODES):
                    return

    async def _cycle(
        self,
        values: list[bytes] | None,
        *,
        force_ack: bool = False,
        ack_now: bool = False,
        budget: int | None = None,
    ) -> bool:
        """One cycle; False when ``budget`` (order positions to apply) ran out first: then
        ``values`` were not appended and the caller runs another cycle."""
        # A cycle is bounded local work (it never waits on peers), and cancelling it halfway
        # would roll the transaction back under memory that moved on, which can only be
        # answered by stopping the base. So it runs shielded; a cancellation of the caller
        # lands right after it, with everything committed.
        with trio.CancelScope(shield=True):
            # the transaction spans awaits (``apply``): other writers of this storage in this
            # process (replication sessions) take turns with it through the fair write lock
            async with _Turn(write_lock(self.storage), checkpoint=False):
                drained = await self._cycle_shielded(
                    values, force_ack=force_ack, ack_now=ack_now, budget=budget
                )
        return drained

    async def _cycle_shielded(
        self, values: list[bytes] | None, *, force_ack: bool, ack_now: bool, budget: int | None
    ) -> bool:
        confirmed_before = self.lin.confirmed_length
        local_before = self.local_log.length
        persisted = self._fingerprint()
        try:
            with self.storage.transaction(flat=True):
                self._ingest()
                drained = await self._drain_all(budget)
                if not drained:
                    values = None  # appended by a later cycle, after the rest of the tip
                elif values or force_ack:
                    self._append_local(values or [])
                    self._ingest_own()
                    await self._drain_all()
                if values:
                    self.ack_due = False  # our value node voted just as an ack would
                for _ in range(MAX_ACKS_PER_CYCLE):
                    if not (self.is_indexer and self.lin.should_ack(self.local_key)):
                        self.ack_due = False
                        break
                    if not (self.eager_acks or self.ack_due or ack_now):
                        self.ack_due = True  # ack on the next cycle unless we write first
                        break
                    self._append_local([])
                    self._ingest_own()
                    await self._drain_all(None if drained else 0)
                self._steps.save(self.lin.take_round_steps())
                self._write_tip()
                self.ledger.write_records()
                if self._fingerprint() != persisted:
                    self._persist()
        except _StopError as stop:
            self._failed = stop.reason
            self._events.publish(stop.kind, reason=stop.reason)
            raise ApplyError(f"the base stopped: {stop.reason}") from None
        except BaseException as exc:
            # the transaction rolled back but memory did not: stop rather than diverge
            self._failed = f"cycle failed: {type(exc).__name__}: {exc}"
            self._events.publish("error", reason=self._failed)
            raise
        finally:
            self._own_blocks.clear()  # only ever holds blocks of the running cycle
        self._announce(confirmed_before)
        if self.local_log.length != local_before:
            self._local_grew.set()
            self._local_grew = trio.Event()
        return drained

    def _announce(self, confirmed_before: int) -> None:
        if self.lin.confirmed_length > confirmed_before:
            self._events.publish("confirmed", length=self.lin.confirmed_length)
        if self.is_indexer != self._was_indexer:
            self._was_indexer = self.is_indexer
            self._events.publish("is-indexer" if self.is_indexer else "is-non-indexer")
        if self.writable != self._was_writable:
            self._was_writable = self.writable
            self._events.publish("writable" if self.writable else "unwritable")

    # --- ingest -----------------------------------------------------------------------------

    def _log(self, key: bytes) -> Log:
        return self.store.get(key=key)

    def _ingest(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for key in self.writer_keys():
                if key not in self.bad_writers and self._ingest_writer(key):
                    progressed = True

    def _ingest_own(self) -> None:
        """Ingest what this cycle just appended locally. Only the local oplog can have grown
        since the cycle's full ``_ingest``, and no other writer's node can depend on a node
        it has not seen, so there is nothing else to take in (writers that apply adds are
        taken in by ``_drain_all``)."""
        if self.local_key not in self.bad_writers:
            self._ingest_writer(self.local_key)

    def _ingest_writer(self, key: bytes) -> bool:
        log = self._log(key)
        lin = self.lin
        added = False
        n = lin.known_length(key)
        own = self._own_blocks if key == self.local_key else None
        run: list[bytes] = []  # blocks read ahead in one query, from run_start on
        run_start = n
        while n < log.length:
            block = None if own is None else own.pop(n, None)
            if block is None:
                if not run_start <= n < run_start + len(run):
                    run, run_start = log.get_run(n, n + INGEST_RUN), n
                    if not run:
                        break  # a sparse gap: wait for replication to fill it
                try:
                    block = decode_block(run[n - run_start])
                except DecodeError as exc:
                    self._report_bad(key, n, exc.message)
                    break
            missing = False
            for writer, length in block.heads:
                if lin.known_length(writer) < length:
                    if writer == key:  # would wait for itself forever
                        self._report_bad(key, n, "a head names its own writer at or after it")
                        return added
                    missing = True
                    if self._wanted.get(writer, 0) < length:
                        self._wanted[writer] = length
            if missing:
                break
            # decode_block checked every field, and the loop above the one rule it cannot
            node = trusted_node(key, n + 1, block.heads, block.batch, block.value)
            try:
                lin.add(node, trusted=True)
            except InvalidNodeError as exc:
                self._report_bad(key, n, exc.message)
                break
            if block.checkpoints:
                self.ledger.collect(block.checkpoints)
            n += 1
            added = True
        return added

    def _report_bad(self, key: bytes, index: int, reason: str) -> None:
        message = f"writer {ids.encode(key)} block {index}: {reason}"
        self.bad_writers[key] = message
        self._events.publish("error", writer=ids.encode(key), index=index, reason=reason)

    # --- drain: undo / apply / confirm ------------------------------------------------------

    async def _drain_all(self, budget: int | None = None) -> bool:
        """``_drain``, then, while it added writers, ingest and drain again: a writer that
        apply adds (or re-adds) may have blocks stored already, and nothing else would make
        a cycle take them in until some other change arrived. True when everything the
        linearizer returned is applied (see ``_drain`` for ``budget``)."""
        self._writers_grew = False
        drained = await self._drain(budget)
        while self._writers_grew and drained:
            self._writers_grew = False
            self._ingest()
            drained = await self._drain(budget)
        return drained

    async def _drain(self, budget: int | None = None) -> bool:
        """Undo and apply what the linearizer says changed, and take in what it confirmed.

        ``budget``: apply about that many order positions (whole batches), then leave the
        rest in ``_pending`` for the next cycle and return False; None applies everything.
        The positions up to the confirmed length are always applied (the checkpoint needs
        the view there). Pending nodes are the end of what the linearizer returned, so an
        undo removes them first: a node that a later arrival reorders was never applied."""
        left = budget
        while True:
            before = self.lin.confirmed_length
            update = self.lin.update(settle=True)
            nodes = update.apply
            undo = update.undo
            pending = self._pending
            if pending:
                cut = min(undo, len(pending))
                undo -= cut
                nodes = pending[: len(pending) - cut] + nodes
                self._pending = []
            if undo:
                kept = self._reorder_acks(undo, nodes)
                if kept is None:
                    self._undo(undo)
                else:
                    nodes = nodes[kept:]
            if left is not None and len(nodes) > left:
                take = _unit_end(nodes, max(left, update.confirmed_length - self._applied_length))
                nodes, self._pending = nodes[:take], nodes[take:]
            if nodes:
                await self._apply_nodes(nodes)
                if left is not None:
                    left -= len(nodes)
            if update.confirmed_length != before:
                self._on_confirmed(before, update.confirmed_length)
            if self._pending:
                return False
            if update.settled:
                return True
            if left is not None and left <= 0:
                return False

    def _view_length_at(self, length: int) -> int:
        """View log length after ``length`` order positions (``length >= floor``)."""
        floor = self._floor()
        if length < floor:
            raise AssertionError(f"view length at {length} is below the record floor {floor}")
        if length == floor:
            return self._floor_view_length
        return self._records[length - floor - 1].view_length

    def _floor(self) -> int:
        """Order position of ``self._records[0]``."""
        return self._applied_length - len(self._records)

    def _undo(self, count: int) -> None:
        target = self._applied_length - count
        if target < self._floor():
            raise AssertionError("the linearizer undid confirmed positions")
        view_length = self._view_length_at(target)
        if self.view_log.length > view_length:
            self.view_log.truncate(view_length)
        del self._records[target - self._floor() :]
        self._applied_length = target
        self._dirty_from = min(self._dirty_from, target)
        while self._memberships[-1][0] > target:
            length, _ = self._memberships.pop()
            self.storage.delete(_MEMBERSHIP + _BE64.pack(length))
        self.membership = self._memberships[-1][1].copy()

    def _reorder_acks(self, count: int, nodes: list[Node]) -> int | None:
        """Keep the view when a reorder only moved acks around values already applied.

        If the values of the undone positions come back first, in the same order, in
        ``nodes``, the view (a function of the value sequence) is unchanged: only the
        applied-order records are rewritten. Returns how many of ``nodes`` were taken over,
        or None when a real rollback is needed (values reordered, or membership changed in
        the undone range).
        """
        target = self._applied_length - count
        if self._memberships[-1][0] > target:
            return None
        floor = self._floor()
        undone = self._records[target - floor :]
        # compared one by one: a real reorder usually differs at once (the tip may be long)
        incoming = (n for n in nodes if n.value is not None)
        kept: list[Record] = []  # the undone value records, which come back as they are
        for record in undone:
            if record.is_value:
                node = next(incoming, None)
                if node is None or node.length != record.length or node.writer != record.writer:
                    return None
                kept.append(record)
        if not kept:
            return None
        # same nodes, same view length after each, same order: only the acks between them
        # get new records
        running = self._view_length_at(target)
        records = self._records
        del records[target - floor :]
        taken = reused = 0
        for node in nodes:
            if reused == len(kept):
                break
            if node.value is not None:
                record = kept[reused]
                reused += 1
                running = record.view_length
            else:
                record = Record(node.writer, node.length, running, False)
            records.append(record)
            taken += 1
        self._applied_length = target + taken
        self._dirty_from = min(self._dirty_from, target)
        return taken

    def _write_tip(self) -> None:
        """Bring the stored tip runs in line with memory, once per cycle (``tip.py``)."""
        self._tip_rows.write(self.storage, self._records, self._floor(), self._dirty_from)
        self._dirty_from = self._applied_length

    async def _apply_nodes(self, nodes: list[Node]) -> None:
        unit: list[Node] = []
        for node in nodes:
            unit.append(node)
            if node.batch == 1:
                await self._apply_unit(unit)
                unit = []
        if unit:
            raise AssertionError("the linearizer exposed an incomplete batch")

    async def _apply_unit(self, unit: list[Node]) -> None:
        writer = unit[0].writer  # a unit is one writer's batch (or one ack)
        if unit[-1].writer != writer:
            raise AssertionError("the linearizer exposed a unit of several writers")
        values = (
            [ApplyNode(writer, n.length, n.value) for n in unit if n.value is not None]
            if self.membership.is_writer(writer)
            else []
        )
        if values:
            host = ApplyHost(self.membership)
            try:
                await self._apply_fn(values, self.view, host)
            except _StopError:
                raise
            except Exception as exc:
                raise _StopError("error", f"apply raised {type(exc).__name__}: {exc}") from exc
            if host.interrupted is not None:
                raise _StopError("interrupted", host.interrupted)
            for refusal in host.refusals:
                self._events.publish("error", reason=refusal)
            for key in host.added:
                self._log(key)
                self._writers_grew = True
            if host.changed:
                length = self._applied_length + len(unit)
                self._memberships.append((length, self.membership.copy()))
                self._put_membership(length, self.membership)
        view_length = self.view_log.length
        applied = self._applied_length
        self._dirty_from = min(self._dirty_from, applied)
        self._records += [
            Record(n.writer, n.length, view_length, n.value is not None) for n in unit
        ]
        self._applied_length = applied + len(unit)

    def _put_membership(self, length: int, membership: Membership) -> None:
        self.storage.put(_MEMBERSHIP + _BE64.pack(length), membership.encode())

    def _membership_at(self, length: int) -> Membership:
        found = self._memberships[0][1]
        for at, membership in self._memberships:
            if at > length:
                break
            found = membership
        return found

    def _on_confirmed(self, before: int, after: int) -> None:
        floor = self._floor()
        value_end = self._value_end
        for position in range(after - 1, before - 1, -1):  # the newest value confirmed now
            if self._records[position - floor].is_value:
                value_end = position + 1
                break
        new_view_length = self._view_length_at(after)
        if value_end > self._value_end:
            self._value_end = value_end
            membership = self._membership_at(value_end)
            signing = tuple(self.lin.indexers)
            view_length = self._view_length_at(value_end)
            checkpoint = Checkpoint(
                self.key,
                membership.epoch,
                value_end,
                view_length,
                self.view_log.tree_hash(view_length),
                membership.hash(),
            )
            link = tuple(membership.indexers) != tuple(signing)
            self.ledger.confirmed(checkpoint, signing, membership, link=link)
            if link:
                at = max(
                    (length - 1 for length, _ in self._memberships if before < length <= after),
                    default=after - 1,
                )
                self._steps.save(self.lin.take_round_steps())
                old_epoch = self.lin.epoch
                self._steps.indexer_count = len(membership.indexers)
                self.lin.set_indexers(membership.indexers, at=at)
                self._writers_grew = True
                self._steps.drop_epoch(old_epoch)
        # positions below ``after`` are confirmed: forget their records (rows: _write_tip)
        del self._records[: after - floor]
        self._floor_view_length = new_view_length

    # --- local appends ----------------------------------------------------------------------

    def _append_local(self, values: list[bytes]) -> None:
        # sorted and unique, exactly as decode_block would give it back
        heads = tuple(sorted({h for h in self.lin.heads() if h[0] != self.local_key}))
        checkpoints = self.ledger.take_pending()
        if not values:
            blocks = [OplogBlock(heads=heads, checkpoints=checkpoints)]
        else:
            count = len(values)
            blocks = [OplogBlock(heads, count, values[0], checkpoints)]
            blocks += [OplogBlock((), count - i, values[i], ()) for i in range(1, count)]
        start = self.local_log.length
        self.local_log.append([encode_block(b) for b in blocks])
        self._own_blocks.update(enumerate(blocks, start))

    # --- persistence ------------------------------------------------------------------------

    def _fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever ``_persist`` would write something different (so an idle
        ``update`` writes nothing and costs no fsync)."""
        return (
            self.lin.confirmed_length,
            self.lin.epoch,
            self._value_end,
            self.ledger.fingerprint(),
        )

    def _persist(self) -> None:
        state = {
            "lin": self.lin.state(steps=False),
            "view_length": self._floor_view_length,
            "value_end": self._value_end,
            **self.ledger.to_wire(),
        }
        self.storage.put(_STATE, encoding.encode_trusted(state))

    # --- status and closing -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "key": ids.encode(self.key),
            "local_key": ids.encode(self.local_key),
            "writable": self.writable,
            "is_indexer": self.is_indexer,
            "writers": [
                {"key": ids.encode(k), "indexer": idx}
                for k, idx in sorted(self.membership.writers.items())
            ],
            "indexers": [ids.encode(k) for k in self.lin.indexers],
            "applied_length": self.applied_length,
            "confirmed_length": self.confirmed_length,
            "signed_length": self.signed_length,
            "bad_writers": sorted(self.bad_writers.values()),
            "failed": self._failed,
        }

    async def close(self) -> None:
        async with _Turn(self._lock):
            self._closed = True
            self._events.close()
            self._wakeup.set()
            self._local_grew.set()


__all__ = ["ApplyFn", "Autobase", "OpenView", "Record"]
