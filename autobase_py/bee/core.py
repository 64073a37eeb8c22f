"""Bee, Batch and Snapshot: the async face of the B+ tree stored in a log.

Theory of operation
-------------------
The tree's root is always the last block of the log, so ``bee.version`` is just
``log.length`` and a bee reads "at" a version by starting from block ``version - 1``. Writes go
through a :class:`Batch`: ``put``/``delete`` only record the operation (they are synchronous);
the operations are applied to a copy-on-write :class:`~.tree.TreeWriter` at the next async call
on the batch, and ``flush`` seals the changed nodes into blocks and appends them with ONE
``log.append`` call (one signature). A flush whose operations change nothing appends nothing.
A flush is always a cancel point, before it writes anything, and a schedule point unless its
task already passed one since this bee's previous flush (trio counts them per task): a loop
of flushes lets other tasks run between any two, and a flush that follows another yield (a
base cycle takes its lock first) does not pay for a second one.

Read-your-writes: ``batch.get`` and ``batch.range`` read the batch's own tree, so they see the
batch's pending puts and deletes (the registry's ``apply`` relies on it). A batch remembers the
``(fork, length)`` of the log it started from; if the log moved underneath it (another batch
flushed, or the log was truncated), the batch rebuilds its tree from the new root by replaying
its operations in call order, so a flush never writes nodes that point into a stale tree.

Caching and rollback: decoded nodes are cached by address (block and slot); a node is decoded
only when a walk reaches it, and the last few blocks read are kept so that further nodes of the
same block need no second read. Blocks below the length never change while the fork id stays
the same, and a truncate always bumps the fork; so the bee compares ``log.fork`` (and the
length) with what its caches were filled under at the start of every operation. After a flush
the bee records the log's tree fingerprint at the new length (its Merkle roots, or its tree
hash for a log without ``roots()``). When the fork changed (or the log got shorter: a
rolled-back transaction) and the log now ends at a length whose recorded fingerprint equals
the log's current one, blocks below that length are exactly the ones cached, so
only what was cached from the blocks at and above it is dropped (the undo path of a base:
truncate to an earlier flush, then flush again, reads nothing back; for the same reason the
nodes a flush replaces move to a small side cache instead of being dropped). Otherwise every
cache is emptied. No stale node is ever read after a truncate, and reads simply continue from
the new last block: truncating the log *is* rolling the bee back.

Snapshots taken before a truncate: a snapshot records the log's tree hash at its version. After
a fork change it stays readable exactly when the log still holds that version with the same
tree hash (the truncate cut above it); otherwise every read raises
:class:`SnapshotExpiredError`. A ``bee.range(...)`` iterator is pinned to the version at which it
was created and, not holding a tree hash, raises :class:`SnapshotExpiredError` if the log's fork
changes while it is being consumed.

Sparse replicas: when the tree code needs a block the replica lacks it raises
:class:`~.tree.BlockMissing`; the bee asks its :class:`~.source.BlockSource` for a proof, applies
it with ``log.apply_proof`` (which verifies it, raising the log's typed verification error for a
tampered block), and retries the operation. ``bee.blocks_fetched`` counts fetched blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import trio

from ..errors import (
    AutobaseError,
    BlockNotAvailableError,
    LocalError,
    NotWritableError,
    OutOfRangeError,
)
from .node import MAX_KEY_BYTES, SLOT_BITS, SLOT_MASK, Block, Node
from .source import BeeLog, BlockSource
from .tree import DEFAULT_PACK_BYTES, BlockMissing, RangeCursor, TreeWriter, lookup

T = TypeVar("T")

DEFAULT_LEAF_MAX = 16
DEFAULT_INTERNAL_MAX = 64
DEFAULT_CACHE_NODES = 32768
BLOCK_CACHE = 64  # checked blocks kept for their remaining nodes
MAX_ROOTS = 512  # root nodes of recent versions kept by version (older ones are re-read)
MAX_HASHES = 1024  # recorded (length -> tree fingerprint) pairs kept for truncate checks
OLD_NODES = 256  # nodes replaced by recent flushes, kept for an undo that reads them again


class SnapshotExpiredError(OutOfRangeError):
    """The log was truncated below a snapshot's version (or rewritten under it)."""

    code = "SNAPSHOT_EXPIRED"


class NotAVersionError(OutOfRangeError):
    """The log (or a requested version) ends between two flushes: its last block is not a
    root. Truncate views only to lengths a flush returned."""

    code = "NOT_A_BEE_VERSION"


class InvalidEntryError(LocalError):
    """A key or value is not ``bytes``, or range arguments are inconsistent."""

    code = "INVALID_ENTRY"


def _schedule_points(task: trio.lowlevel.Task) -> int:
    """How many schedule points ``task`` has passed (trio counts them per task for its own
    checkpoint assertions). A trio without that count gives -2 every time, so a flush always
    finds the count it recorded and always yields (the behaviour before this rule)."""
    points: int = getattr(task, "_schedule_points", -2)
    return points


def _check_bytes(what: str, value: object) -> None:
    if type(value) is not bytes:
        raise InvalidEntryError(f"bee {what} must be bytes, got {type(value).__name__}")


def _check_bounds(bounds: tuple[bytes | None, ...], limit: int | None) -> None:
    for bound in bounds:
        if bound is not None:
            _check_bytes("range bound", bound)
    gt, gte, lt, lte = bounds
    if gt is not None and gte is not None:
        raise InvalidEntryError("pass at most one of gt and gte")
    if lt is not None and lte is not None:
        raise InvalidEntryError("pass at most one of lt and lte")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise InvalidEntryError("limit must be a non-negative int or None")


class RangeIterator:
    """Async iterator of ``(key, value)`` pairs in key order (or reverse), up to ``limit``."""

    def __init__(
        self, bee: Bee, root: Callable[[], Node | None], cursor: RangeCursor, limit: int | None
    ) -> None:
        self._bee = bee
        self._root = root
        self._cursor = cursor
        self._remaining = limit
        self._buffer: list[tuple[bytes, bytes]] = []
        self._next = 0

    def __aiter__(self) -> RangeIterator:
        return self

    def _chunk(self) -> list[tuple[bytes, bytes]]:
        return self._cursor.next_chunk(self._root(), self._bee._load)

    async def __anext__(self) -> tuple[bytes, bytes]:
        while self._next >= len(self._buffer):
            if self._cursor.done or self._remaining == 0:
                raise StopAsyncIteration
            self._buffer = await self._bee._retry(self._chunk)
            self._next = 0
        if self._remaining is not None:
            if self._remaining == 0:
                raise StopAsyncIteration
            self._remaining -= 1
        item = self._buffer[self._next]
        self._next += 1
        return item

    async def collect(self) -> list[tuple[bytes, bytes]]:
        """Every remaining entry as a list."""
        return [item async for item in self]


class Bee:
    """An ordered bytes -> bytes map stored as a copy-on-write B+ tree in a log.

    ``Bee(log)`` over a writable log reads and writes; over a replica it reads, fetching
    missing blocks through ``source`` (see :mod:`.source`). ``leaf_max``, ``internal_max``
    and ``pack_bytes`` (the size a flush fills a block to before starting the next one) shape
    only what this bee writes; any valid tree can be read.
    """

    def __init__(
        self,
        log: BeeLog,
        *,
        source: BlockSource | None = None,
        leaf_max: int = DEFAULT_LEAF_MAX,
        internal_max: int = DEFAULT_INTERNAL_MAX,
        cache_nodes: int = DEFAULT_CACHE_NODES,
        pack_bytes: int = DEFAULT_PACK_BYTES,
    ) -> None:
        if leaf_max < 4 or internal_max < 4:
            raise LocalError("leaf_max and internal_max must be at least 4")
        if type(pack_bytes) is not int or pack_bytes < 1:
            raise LocalError("pack_bytes must be a positive int")
        self.pack_bytes = pack_bytes
        self.log = log
        self.source = source
        self.leaf_max = leaf_max
        self.internal_max = internal_max
        self.blocks_fetched = 0
        self._cache_nodes = max(16, cache_nodes)
        self._cache: dict[int, Node] = {}  # by address
        # Nodes recent flushes replaced (oldest first): an undo (truncating back to the
        # version they belong to) reads them again; other reads rarely do.
        self._old: dict[int, Node] = {}
        self._roots: dict[int, Node] = {}  # by block index: the root ending that block
        self._blocks: dict[int, Block] = {}  # by block index, oldest first
        # Slot counts of every block with a node in _cache or a key in _blocks or _roots, so
        # a truncate can drop exactly those blocks' entries.
        self._slots: dict[int, int] = {}
        # The log's tree fingerprint at lengths flushes ended at, while the caches were valid.
        self._hashes: dict[int, object] = {}
        self._fork = log.fork
        self._length = log.length  # the longest length seen since the cache was last valid
        self._log_roots: Callable[[], Iterable[object]] | None = getattr(log, "roots", None)
        # The task of the last flush and its schedule point count after that flush's yield.
        self._flush_task: object = None
        self._flush_points = -1

    # -- plumbing ------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The log length this bee reads at (its root is block ``version - 1``)."""
        return self.log.length

    @property
    def writable(self) -> bool:
        return self.log.writable

    def _sync(self) -> None:
        log = self.log
        length = log.length
        if log.fork != self._fork or length < self._length:
            # A truncate (new fork), or appends undone by a rolled-back storage transaction
            # (same fork, shorter log): blocks from here on may come back different.
            self._rewind(length)
            self._fork = log.fork
        self._length = length

    def _fingerprint(self) -> object:
        """What identifies the log's blocks at its current length: its Merkle roots when the
        log exposes them (``roots()``: what the tree hash hashes, without hashing), else its
        tree hash."""
        roots = self._log_roots
        if roots is not None:
            return tuple(roots())
        return self.log.tree_hash()

    def _rewind(self, length: int) -> None:
        """Keep the cached blocks below ``length`` if the log provably still holds them (its
        tree hash at ``length`` is the one recorded when a flush ended there); drop the
        rest, or everything."""
        recorded = self._hashes.get(length) if length <= self._length else None
        if recorded is None or recorded != self._fingerprint():
            self._cache.clear()
            self._old.clear()
            self._roots.clear()
            self._blocks.clear()
            self._slots.clear()
            self._hashes.clear()
            return
        slots = self._slots
        if self._length - length > len(slots):  # a long cut: scan what is cached instead
            dropped: Iterable[int] = [seq for seq in slots if seq >= length]
        else:
            dropped = range(length, self._length)
        cache, old, roots, blocks = self._cache, self._old, self._roots, self._blocks
        for seq in dropped:
            count = slots.pop(seq, 0)
            if count:
                first = seq << SLOT_BITS
                for address in range(first, first + count):
                    cache.pop(address, None)
                    old.pop(address, None)
                roots.pop(seq, None)
                blocks.pop(seq, None)
        hashes = self._hashes  # in increasing length order: flushes only ever extend the log
        while hashes:
            last = next(reversed(hashes))
            if last <= length:
                break
            del hashes[last]

    def _remember(self, node: Node) -> None:
        if len(self._cache) >= self._cache_nodes:
            self._shrink_cache()
        self._cache[node.seq] = node  # type: ignore[index]

    def _shrink_cache(self) -> None:
        """Drop the older half of the node cache and the cached roots."""
        cache = self._cache
        keep = list(cache.items())[len(cache) // 2 :]
        cache.clear()
        cache.update(keep)
        self._roots.clear()
        self._recount_slots()

    def _recount_slots(self) -> None:
        """Slot counts of exactly the blocks something is cached from (blocks, roots, nodes)."""
        slots = {seq: len(block) for seq, block in self._blocks.items()}
        roots = [node.seq for node in self._roots.values()]
        for address in [*roots, *self._cache, *self._old]:
            seq, count = address >> SLOT_BITS, (address & SLOT_MASK) + 1  # type: ignore[operator]
            if slots.get(seq, 0) < count:
                slots[seq] = count
        self._slots = slots

    def _trim(self) -> None:
        """Keep the per-version bookkeeping bounded: the newest ``MAX_ROOTS`` roots, and
        slot counts only for blocks something is still cached from (recounted when stale
        entries dominate). Every flush adds a root and a slot count, so without this a
        long-lived writer's bee would keep one root node per version forever."""
        roots = self._roots
        if len(roots) > MAX_ROOTS:
            for seq in list(roots)[: len(roots) - MAX_ROOTS // 2]:
                del roots[seq]
        live = len(self._cache) + len(self._old) + len(roots) + len(self._blocks)
        if len(self._slots) > 2 * live + 1024:
            self._recount_slots()

    def _flushed(self, nodes: list[Node], superseded: list[int]) -> None:
        """Bookkeeping after a flush appended ``nodes`` (the last is the new root), replacing
        the stored nodes ``superseded``."""
        cache, old = self._cache, self._old
        for address in superseded:  # older versions: read again only by an undo
            replaced = cache.pop(address, None)
            if replaced is not None:
                old[address] = replaced
        if len(old) > OLD_NODES:
            for address in list(old)[: len(old) - OLD_NODES // 2]:
                del old[address]
        limit = self._cache_nodes
        for node in nodes:  # _remember, inlined: a flush stores a few nodes every time
            if len(cache) >= limit:
                self._shrink_cache()  # rebuilds the slot counts of what stays cached
            at: int = node.seq  # type: ignore[assignment]
            cache[at] = node
            self._slots[at >> SLOT_BITS] = (at & SLOT_MASK) + 1
        length = self.log.length
        self._roots[length - 1] = nodes[-1]
        self._trim()
        self._length = length
        hashes = self._hashes
        if len(hashes) >= MAX_HASHES:
            for oldest in list(hashes)[: MAX_HASHES // 2]:
                del hashes[oldest]
        hashes[length] = self._fingerprint()

    def _block(self, seq: int) -> Block:
        """Block ``seq`` with its header checked (kept in a small cache: a range or a cold
        walk often reads several nodes of one block)."""
        block = self._blocks.get(seq)
        if block is not None:
            return block
        try:
            data = self.log.get(seq)
        except BlockNotAvailableError as exc:
            raise BlockMissing(seq) from exc
        block = Block(data, seq)
        self._slots[seq] = len(block)
        blocks = self._blocks
        if len(blocks) >= BLOCK_CACHE:
            del blocks[next(iter(blocks))]
        blocks[seq] = block
        return block

    def _load(self, address: int) -> Node:
        node = self._cache.get(address)
        if node is not None:
            return node
        node = self._old.pop(address, None)
        if node is None:
            node = self._block(address >> SLOT_BITS).node(address & SLOT_MASK)
        self._remember(node)
        return node

    def _root(self, version: int) -> Node | None:
        if version == 0:
            return None
        node = self._roots.get(version - 1)
        if node is None:
            block = self._block(version - 1)
            node = self._load((version - 1) << SLOT_BITS | (len(block) - 1))
            if node.root:
                self._roots[version - 1] = node
        if not node.root:
            raise NotAVersionError(
                f"block {version - 1} is not a bee root: length {version} falls between two "
                "flushes (was the log truncated to a length no flush ended at?)"
            )
        return node

    async def _fetch(self, seq: int) -> None:
        assert self.source is not None
        proof = await self.source(seq, self.log.length)
        self.log.apply_proof(proof)
        self.blocks_fetched += 1

    async def _retry(self, operation: Callable[[], T]) -> T:
        """Run a synchronous tree operation, fetching missing blocks until it completes."""
        previous = -1
        while True:
            self._sync()
            try:
                return operation()
            except BlockMissing as missing:
                if self.source is None or missing.seq == previous:
                    raise
                previous = missing.seq
                await self._fetch(missing.seq)

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key`` at the current version, or None."""
        _check_bytes("key", key)
        return await self._retry(lambda: lookup(self._root(self.log.length), key, self._load))

    def range(
        self,
        *,
        gt: bytes | None = None,
        gte: bytes | None = None,
        lt: bytes | None = None,
        lte: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> RangeIterator:
        """Entries with keys inside the bounds, in order (``reverse`` for descending), at the
        version current now; raises SnapshotExpiredError if the log forks meanwhile."""
        _check_bounds((gt, gte, lt, lte), limit)
        pinned = Snapshot(self, self.log.length, self.log.fork, None)
        cursor = RangeCursor(gt=gt, gte=gte, lt=lt, lte=lte, reverse=reverse)
        return RangeIterator(self, pinned._current_root, cursor, limit)

    def snapshot(self, version: int | None = None) -> Snapshot:
        """A read-only view pinned at ``version`` (default: the current one)."""
        length = self.log.length
        if version is None:
            version = length
        if type(version) is not int or not 0 <= version <= length:
            raise OutOfRangeError(f"snapshot version {version!r} outside 0..{length}")
        try:
            tree_hash: bytes | None = self.log.tree_hash(version)
        except AutobaseError:
            tree_hash = None
        return Snapshot(self, version, self.log.fork, tree_hash)

    # -- writes --------------------------------------------------------------------------

    def batch(self) -> Batch:
        """A new batch of puts and deletes, appended by ``await batch.flush()``."""
        return Batch(self)

    async def put(self, key: bytes, value: bytes) -> None:
        """Store one entry (a batch of one)."""
        batch = self.batch()
        batch.put(key, value)
        await batch.flush()

    async def delete(self, key: bytes) -> None:
        """Remove one entry (a batch of one); deleting a missing key appends nothing."""
        batch = self.batch()
        batch.delete(key)
        await batch.flush()


class _TreeReader:
    """``get``/``range`` over whatever root ``_reading_root()`` names (a snapshot's pinned
    version, a batch's tree with its unflushed operations)."""

    __slots__ = ()
    _bee: Bee

    def _reading_root(self) -> Node | None:
        raise NotImplementedError

    async def get(self, key: bytes) -> bytes | None:
        """The value under ``key`` in the tree this object reads, or None."""
        _check_bytes("key", key)
        bee = self._bee
        return await bee._retry(lambda: lookup(self._reading_root(), key, bee._load))

    def range(
        self,
        *,
        gt: bytes | None = None,
        gte: bytes | None = None,
        lt: bytes | None = None,
        lte: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> RangeIterator:
        """Like :meth:`Bee.range`, over the tree this object reads (a batch's leaves are read
        from its tree as it is when the iterator reaches them)."""
        _check_bounds((gt, gte, lt, lte), limit)
        cursor = RangeCursor(gt=gt, gte=gte, lt=lt, lte=lte, reverse=reverse)
        return RangeIterator(self._bee, self._reading_root, cursor, limit)


class Snapshot(_TreeReader):
    """A read-only view of a bee pinned at one version (see the module docstring for what
    happens when the log is truncated)."""

    def __init__(self, bee: Bee, version: int, fork: int, tree_hash: bytes | None) -> None:
        self._bee = bee
        self._version = version
        self._fork = fork
        self._tree_hash = tree_hash

    @property
    def version(self) -> int:
        return self._version

    def _current_root(self) -> Node | None:
        log = self._bee.log
        if log.fork != self._fork:
            still_there = False
            if self._tree_hash is not None and log.length >= self._version:
                try:
                    still_there = log.tree_hash(self._version) == self._tree_hash
                except AutobaseError:
                    still_there = False
            if not still_there:
                raise SnapshotExpiredError(
                    f"the log was truncated below this snapshot's version {self._version}"
                )
            self._fork = log.fork
        elif log.length < self._version:
            raise SnapshotExpiredError(
                f"the log is shorter than this snapshot's version {self._version} (a "
                "rolled-back transaction undid the appends it saw)"
            )
        return self._bee._root(self._version)

    def _reading_root(self) -> Node | None:
        return self._current_root()


class Batch(_TreeReader):
    """Puts and deletes applied together by one ``flush`` (one log append).

    ``put``/``delete`` are synchronous and only record the operation; ``get``/``range`` on the
    batch see the recorded operations (read-your-writes). After a flush the batch is empty and
    may be reused; ``discard`` drops unflushed operations.
    """

    __slots__ = ("_applied", "_base", "_bee", "_final", "_ops", "_originals", "_writer")

    def __init__(self, bee: Bee) -> None:
        self._bee = bee
        self._ops: list[tuple[bytes, bytes | None]] = []
        self._final: dict[bytes, bytes | None] = {}
        self._originals: dict[bytes, bytes | None] = {}
        self._applied = 0
        self._writer: TreeWriter | None = None
        self._base: tuple[int, int] = (-1, -1)

    def __len__(self) -> int:
        """The number of operations recorded since the last flush."""
        return len(self._ops)

    def _record(self, key: bytes, value: bytes | None) -> None:
        if not self._bee.log.writable:
            raise NotWritableError("cannot write to a bee over a read-only log")
        self._ops.append((key, value))
        self._final[key] = value

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` (a put of the value already stored changes nothing)."""
        if type(key) is not bytes or type(value) is not bytes:  # the common case: one test
            _check_bytes("key", key)
            _check_bytes("value", value)
        if len(key) > MAX_KEY_BYTES:
            raise InvalidEntryError(f"bee keys are at most {MAX_KEY_BYTES} bytes")
        self._record(key, value)

    def delete(self, key: bytes) -> None:
        """Remove ``key`` (removing a missing key changes nothing)."""
        _check_bytes("key", key)
        self._record(key, None)

    def discard(self) -> None:
        """Forget every operation recorded since the last flush."""
        self._ops.clear()
        self._final.clear()
        self._originals.clear()
        self._applied = 0
        self._writer = None

    def _advance(self) -> TreeWriter:
        """Bring the batch's tree up to date with the log and the recorded operations."""
        bee = self._bee
        log = bee.log
        base = (log.fork, log.length)
        writer = self._writer
        if writer is None or base != self._base:
            writer = TreeWriter(
                bee._root(log.length),
                bee._load,
                leaf_max=bee.leaf_max,
                internal_max=bee.internal_max,
            )
            self._writer, self._base = writer, base
            self._applied = 0
            self._originals = {}
        ops = self._ops
        originals = self._originals
        while self._applied < len(ops):
            key, value = ops[self._applied]
            if value is None:
                changed, old = writer.delete(key)
            else:
                changed, old = writer.put(key, value)
            self._applied += 1
            if changed and key not in originals:
                originals[key] = old
        return writer

    def _root(self) -> Node | None:
        return self._advance().root

    def _reading_root(self) -> Node | None:
        return self._root()

    async def flush(self) -> int:
        """Append the batch's changes in one log append; returns the new version. Appends
        nothing when the operations leave every key as it was."""
        bee = self._bee
        log = bee.log
        if not log.writable:
            raise NotWritableError("cannot write to a bee over a read-only log")
        # Every flush is a cancel point (a cancellation lands here, before anything was
        # written), and a schedule point unless this task already passed one since this
        # bee's previous flush: a loop of flushes lets other tasks run between any two of
        # them, while a flush that follows some other yield (the base's lock, once per
        # cycle) does not pay for a second one. (Yielding only every 16th flush saved ~20 us
        # of CPU per real-store 1-put flush but made the live three-base bench ~20%
        # costlier: replication and acks waited behind apply loops.)
        task = trio.lowlevel.current_task()
        if task is bee._flush_task and _schedule_points(task) == bee._flush_points:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        bee._flush_task, bee._flush_points = task, _schedule_points(task)
        try:  # a writer's blocks are local: no fetch, so no need for _retry's coroutine
            bee._sync()
            writer = self._advance()
        except BlockMissing:
            writer = await bee._retry(self._advance)
        # No await from here on: the sealed blocks go on top of exactly the tree they extend.
        final = self._final
        for key, old in self._originals.items():
            if final[key] != old:
                blocks, nodes = writer.seal(log.length, bee.pack_bytes)
                if blocks:
                    try:
                        log.append(blocks)
                    except BaseException:
                        self._writer = None  # its nodes were numbered for an append that failed
                        raise
                    bee._flushed(nodes, writer.superseded)
                break
        self.discard()
        return log.length


__all__ = [
    "Batch",
    "Bee",
    "InvalidEntryError",
    "NotAVersionError",
    "RangeIterator",
    "Snapshot",
    "SnapshotExpiredError",
]
