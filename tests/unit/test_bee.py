"""Unit tests of the bee over an in-memory stand-in log (the real log is used in the
stateful, integration and sparse tests)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from autobase_py.bee import Bee, InvalidEntryError, NotAVersionError, SnapshotExpiredError
from autobase_py.bee.node import Node, decode_block, encode_node
from autobase_py.errors import (
    AutobaseError,
    BlockNotAvailableError,
    DecodeError,
    InvalidProofError,
    NotWritableError,
    OutOfRangeError,
)


class MemoryLog:
    """Just enough of a log: blocks in a list, a fork counter, a chained hash."""

    def __init__(self, writable: bool = True) -> None:
        self.blocks: list[bytes | None] = []
        self.writable = writable
        self.fork = 0
        self.appends = 0

    @property
    def length(self) -> int:
        return len(self.blocks)

    def append(self, blocks: Sequence[bytes]) -> int:
        assert self.writable
        self.appends += 1
        self.blocks.extend(blocks)
        return self.length

    def get(self, index: int) -> bytes:
        if index >= self.length or self.blocks[index] is None:
            raise BlockNotAvailableError(f"block {index}")
        block = self.blocks[index]
        assert block is not None
        return block

    def has(self, index: int) -> bool:
        return index < self.length and self.blocks[index] is not None

    def tree_hash(self, length: int | None = None) -> bytes:
        h = hashlib.blake2b(digest_size=32)
        for block in self.blocks[: self.length if length is None else length]:
            assert block is not None
            h.update(hashlib.blake2b(block).digest())
        return h.digest()

    def truncate(self, length: int) -> None:
        del self.blocks[length:]
        self.fork += 1

    def apply_proof(self, proof: Any) -> None:
        index, block, digest = proof
        if hashlib.blake2b(block).digest() != digest:
            raise InvalidProofError("block does not match")
        self.blocks[index] = block


async def collect(it: Any) -> list[tuple[bytes, bytes]]:
    return [item async for item in it]


def k(i: int) -> bytes:
    return b"key-%06d" % i


async def test_empty_bee_reads_nothing() -> None:
    bee = Bee(MemoryLog())
    assert bee.version == 0
    assert await bee.get(b"x") is None
    assert await collect(bee.range()) == []


async def test_put_get_delete_roundtrip() -> None:
    log = MemoryLog()
    bee = Bee(log)
    await bee.put(b"a", b"1")
    await bee.put(b"b", b"2")
    assert await bee.get(b"a") == b"1"
    assert await bee.get(b"b") == b"2"
    assert await bee.get(b"c") is None
    await bee.delete(b"a")
    assert await bee.get(b"a") is None
    assert await collect(bee.range()) == [(b"b", b"2")]


async def test_identical_put_and_missing_delete_append_nothing() -> None:
    log = MemoryLog()
    bee = Bee(log)
    await bee.put(b"a", b"1")
    appends, length = log.appends, log.length
    await bee.put(b"a", b"1")
    await bee.delete(b"missing")
    batch = bee.batch()
    batch.put(b"new", b"x")
    batch.delete(b"new")
    batch.put(b"a", b"2")
    batch.put(b"a", b"1")
    assert await batch.flush() == length
    assert (log.appends, log.length) == (appends, length)


async def test_one_append_per_flush_and_each_node_written_once() -> None:
    log = MemoryLog()
    bee = Bee(log, leaf_max=8, internal_max=8)
    batch = bee.batch()
    for i in range(500):
        batch.put(k(i), b"v")
    await batch.flush()
    assert log.appends == 1
    # Every stored node is reachable from the root exactly once: no node was written twice.
    stored = {
        node.seq: node for seq in range(log.length) for node in decode_block(log.get(seq), seq)
    }
    seen: set[int] = set()
    stack = [max(stored)]  # the root ends the last block
    while stack:
        address = stack.pop()
        assert address not in seen
        seen.add(address)
        node = stored[address]
        if node.children is not None:
            stack.extend(node.children)  # type: ignore[arg-type]
    assert seen == set(stored)


async def test_collapse_onto_an_unchanged_subtree_rewrites_it_as_the_last_block() -> None:
    log = MemoryLog()
    bee = Bee(log, leaf_max=4, internal_max=4)
    batch = bee.batch()
    for i in range(5):  # sequential: the root splits into a full leaf and a leaf of one
        batch.put(k(i), b"v")
    await batch.flush()
    root = decode_block(log.get(log.length - 1), log.length - 1)[-1]
    assert root.children is not None and len(root.children) == 2
    length = log.length
    await bee.delete(k(4))  # empties the right leaf: the tree collapses onto the left one
    assert log.length == length + 1  # only a copy of the left leaf, marked as the root
    top = decode_block(log.get(log.length - 1), log.length - 1)
    assert len(top) == 1 and top[0].root and top[0].children is None
    assert await collect(bee.range()) == [(k(i), b"v") for i in range(4)]


async def test_failed_append_keeps_the_batch_and_a_retry_flushes_it() -> None:
    log = MemoryLog()
    bee = Bee(log, leaf_max=4, internal_max=4)
    await bee.put(b"base", b"0")
    real_append = log.append
    calls = {"n": 0}

    def failing_append(blocks: Sequence[bytes]) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return real_append(blocks)

    log.append = failing_append  # type: ignore[method-assign]
    batch = bee.batch()
    for i in range(20):
        batch.put(k(i), b"v")
    length = log.length
    with pytest.raises(OSError):
        await batch.flush()
    assert log.length == length
    assert await bee.get(k(3)) is None
    assert await batch.get(k(3)) == b"v"  # the operations survived the failed append
    await batch.flush()
    assert len(await collect(bee.range())) == 21


class _StepCounter(trio.abc.Instrument):
    """Counts the times one task resumes (one per schedule point it passed)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_every_flush_is_a_cancel_point_and_lets_other_tasks_run() -> None:
    log = MemoryLog()
    bee = Bee(log)
    for attempt in range(3):  # the first cancelled flush does not yield, the others do
        batch = bee.batch()
        batch.put(k(attempt), b"v")
        with trio.CancelScope() as scope:
            scope.cancel()
            await batch.flush()
        assert scope.cancelled_caught
        assert log.length == attempt  # cancelled before writing anything
        await batch.flush()
    ran = 0

    async def other() -> None:
        nonlocal ran
        while True:
            ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        start = ran
        for i in range(8):  # no other await: the flushes after the first let `other` run
            await bee.put(k(1000 + i), b"v")
        # seven yields; each lets `other` take one step, the last one maybe only after this
        assert ran - start >= 6
        me = trio.lowlevel.current_task()
        steps = _StepCounter(me)
        trio.lowlevel.add_instrument(steps)
        for i in range(8):  # another schedule point of this task before each flush
            await trio.lowlevel.checkpoint()
            before = steps.steps
            await bee.put(k(2000 + i), b"v")
            assert steps.steps == before  # the flush did not yield a second time
            with trio.CancelScope() as scope:  # but it is still a cancel point
                scope.cancel()
                await bee.put(k(3000 + i), b"v")
            assert scope.cancelled_caught
        before = steps.steps
        await bee.put(k(4000), b"v")  # the cancelled flushes yielded (trio's cancel path)
        await bee.put(k(4001), b"v")
        assert steps.steps == before + 1  # the second of two flushes in a row yields
        trio.lowlevel.remove_instrument(steps)
        assert await bee.get(k(2007)) == b"v"
        assert await bee.get(k(3000)) is None
        nursery.cancel_scope.cancel()


async def test_range_keeps_reading_its_version_while_new_flushes_land() -> None:
    bee = Bee(MemoryLog(), leaf_max=4, internal_max=4)
    batch = bee.batch()
    for i in range(50):
        batch.put(k(i), b"old")
    await batch.flush()
    it = bee.range()
    first = [await it.__anext__() for _ in range(10)]
    batch = bee.batch()
    for i in range(50):
        batch.put(k(i), b"new")
    batch.put(k(999), b"new")
    await batch.flush()
    rest = await it.collect()
    assert first + rest == [(k(i), b"old") for i in range(50)]


async def test_undecodable_block_in_the_log_is_a_decode_error() -> None:
    log = MemoryLog()
    bee = Bee(log, leaf_max=4, internal_max=4)
    await bee.put(b"a", b"1")
    log.append([b"\x01\x02 signed, but not a bee node"])
    with pytest.raises(DecodeError):
        await bee.get(b"a")
    with pytest.raises(DecodeError):
        await collect(bee.range())
    with pytest.raises(DecodeError):
        await bee.put(b"b", b"2")


@settings(max_examples=100)
@given(st.data())
def test_hostile_but_well_formed_trees_never_crash_or_loop(data: st.DataObject) -> None:
    """A writer may sign any node blocks: children pointing anywhere earlier, separators that
    disagree with the leaves. Reads must still finish with some answer or a typed error."""
    log = MemoryLog()
    count = data.draw(st.integers(1, 12))
    for seq in range(count):
        keys = sorted(set(data.draw(st.lists(st.binary(max_size=2), max_size=4))))
        if seq == 0 or data.draw(st.booleans()):
            node = Node(keys, [b"v"] * len(keys), None)
        else:
            keys = keys or [b"m"]
            children = data.draw(
                st.lists(st.integers(0, seq - 1), min_size=len(keys) + 1, max_size=len(keys) + 1)
            )
            node = Node(keys, None, list(children))
        log.blocks.append(encode_node(node, root=seq == count - 1))
    bee = Bee(log)
    probe = data.draw(st.binary(max_size=2))

    async def reads() -> None:
        await bee.get(probe)
        await collect(bee.range(gte=probe))
        await collect(bee.range(lt=probe, reverse=True))
        await bee.put(probe, b"x")  # writing on top of it works too
        assert await bee.get(probe) == b"x"

    trio.run(reads)


async def test_batch_reads_its_own_writes() -> None:
    bee = Bee(MemoryLog())
    await bee.put(b"a", b"1")
    batch = bee.batch()
    batch.put(b"b", b"2")
    batch.delete(b"a")
    assert await batch.get(b"b") == b"2"
    assert await batch.get(b"a") is None
    assert await collect(batch.range()) == [(b"b", b"2")]
    assert await bee.get(b"a") == b"1"  # nothing flushed yet
    await batch.flush()
    assert await bee.get(b"a") is None


async def test_range_bounds_reverse_limit_over_many_leaves() -> None:
    bee = Bee(MemoryLog(), leaf_max=4, internal_max=4)
    batch = bee.batch()
    keys = [k(i) for i in range(0, 200, 2)]
    rng = random.Random(1)
    for key in rng.sample(keys, len(keys)):
        batch.put(key, key[::-1])
    await batch.flush()
    for _ in range(200):
        a, b = sorted(rng.randrange(-2, 202) for _ in range(2))
        lo, hi = k(a) if a >= 0 else None, k(b) if b < 200 else None
        lo_inc, hi_inc = rng.random() < 0.5, rng.random() < 0.5
        reverse = rng.random() < 0.5
        limit = rng.choice([None, 0, 1, 3, 50])
        expect = [
            x
            for x in keys
            if (lo is None or (x >= lo if lo_inc else x > lo))
            and (hi is None or (x <= hi if hi_inc else x < hi))
        ]
        if reverse:
            expect.reverse()
        if limit is not None:
            expect = expect[:limit]
        got = await collect(
            bee.range(
                gte=lo if lo_inc else None,
                gt=None if lo_inc else lo,
                lte=hi if hi_inc else None,
                lt=None if hi_inc else hi,
                reverse=reverse,
                limit=limit,
            )
        )
        assert [key for key, _ in got] == expect
        assert all(v == key[::-1] for key, v in got)


async def test_truncate_rolls_back_and_cache_is_not_stale() -> None:
    log = MemoryLog()
    bee = Bee(log, leaf_max=4, internal_max=4)
    for i in range(20):
        await bee.put(k(i), b"old")
    mid = log.length
    await bee.put(k(5), b"newer")
    assert await bee.get(k(5)) == b"newer"
    log.truncate(mid)
    assert await bee.get(k(5)) == b"old"
    # Rewrite the truncated blocks with different content at the same indexes.
    await bee.put(k(5), b"other")
    await bee.put(k(99), b"x")
    assert await bee.get(k(5)) == b"other"
    assert await bee.get(k(99)) == b"x"
    assert len(await collect(bee.range())) == 21


async def test_snapshot_survives_truncate_above_and_expires_below() -> None:
    log = MemoryLog()
    bee = Bee(log)
    await bee.put(b"a", b"1")
    early = bee.snapshot()
    await bee.put(b"a", b"2")
    late = bee.snapshot()
    await bee.put(b"a", b"3")
    log.truncate(late.version)
    assert await early.get(b"a") == b"1"
    assert await late.get(b"a") == b"2"
    log.truncate(early.version)
    await bee.put(b"a", b"4")
    assert await early.get(b"a") == b"1"
    with pytest.raises(SnapshotExpiredError):
        await late.get(b"a")
    with pytest.raises(SnapshotExpiredError):
        await collect(late.range())
    with pytest.raises(OutOfRangeError):
        bee.snapshot(version=log.length + 1)


async def test_log_cut_between_flushes_is_a_typed_error_not_a_wrong_tree() -> None:
    log = MemoryLog()
    bee = Bee(log, leaf_max=4, internal_max=4, pack_bytes=64)  # a flush writes many blocks
    batch = bee.batch()
    for i in range(40):
        batch.put(k(i), b"v")
    version = await batch.flush()
    assert version > 2
    log.truncate(version - 1)  # drops the block ending in the root, leaving an inner node last
    with pytest.raises(NotAVersionError):
        await bee.get(k(1))
    with pytest.raises(NotAVersionError):
        await bee.put(k(1), b"w")
    log.truncate(0)
    await bee.put(k(1), b"w")
    assert await collect(bee.range()) == [(k(1), b"w")]


async def test_range_iterator_expires_on_fork_change() -> None:
    log = MemoryLog()
    bee = Bee(log, leaf_max=4, internal_max=4)
    batch = bee.batch()
    for i in range(40):
        batch.put(k(i), b"v")
    await batch.flush()
    it = bee.range()
    await it.__anext__()
    log.truncate(log.length)  # bumps the fork without changing anything
    with pytest.raises(SnapshotExpiredError):
        await collect(it)


async def test_batch_rebuilds_when_log_moves_underneath() -> None:
    log = MemoryLog()
    bee = Bee(log)
    first, second = bee.batch(), bee.batch()
    first.put(b"a", b"1")
    second.put(b"b", b"2")
    assert await second.get(b"b") == b"2"
    await first.flush()
    await second.flush()
    assert await collect(bee.range()) == [(b"a", b"1"), (b"b", b"2")]


async def test_invalid_entries_and_read_only_writes_are_typed_errors() -> None:
    bee = Bee(MemoryLog())
    batch = bee.batch()
    with pytest.raises(InvalidEntryError):
        batch.put("a", b"1")  # type: ignore[arg-type]
    with pytest.raises(InvalidEntryError):
        batch.put(b"a", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidEntryError):
        await bee.get(1)  # type: ignore[arg-type]
    with pytest.raises(InvalidEntryError):
        bee.range(gt=b"a", gte=b"b")
    with pytest.raises(InvalidEntryError):
        bee.range(limit=-1)
    with pytest.raises(InvalidEntryError):
        batch.put(b"k" * 65536, b"1")
    replica = Bee(MemoryLog(writable=False))
    with pytest.raises(NotWritableError):
        replica.batch().put(b"a", b"1")
    with pytest.raises(AutobaseError):
        Bee(MemoryLog(), leaf_max=2)


async def test_sparse_reads_fetch_through_source_and_reject_tampering() -> None:
    writer = MemoryLog()
    # Small packs: the tree spans many blocks, so fetching only what a read touches shows.
    wbee = Bee(writer, leaf_max=8, internal_max=8, pack_bytes=128)
    batch = wbee.batch()
    for i in range(1000):
        batch.put(k(i), b"v%d" % i)
    await batch.flush()
    replica = MemoryLog(writable=False)
    replica.blocks = [None] * writer.length
    tamper = {"on": False}

    async def source(index: int, length: int) -> Any:
        assert length == replica.length
        block = writer.get(index)
        digest = hashlib.blake2b(block).digest()
        if tamper["on"]:
            block = block[:-1] + bytes([block[-1] ^ 1])
        return (index, block, digest)

    rbee = Bee(replica, source=source)
    assert await rbee.get(k(500)) == b"v500"
    fetched = rbee.blocks_fetched
    assert 2 <= fetched <= 5
    assert sum(b is not None for b in replica.blocks) == fetched
    assert await collect(rbee.range(gte=k(10), lt=k(14))) == [
        (k(i), b"v%d" % i) for i in range(10, 14)
    ]
    tamper["on"] = True
    with pytest.raises(InvalidProofError):
        await rbee.get(k(999))
    no_source = Bee(replica)
    with pytest.raises(BlockNotAvailableError):
        await no_source.get(k(999))


ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete", "flush", "read"]),
        st.integers(0, 80),
        st.sampled_from([b"a", b"bb", b"c" * 30]),
    ),
    max_size=300,
)


@settings(max_examples=60)
@given(ops_strategy)
def test_same_operations_give_byte_identical_logs(ops: list[tuple[str, int, bytes]]) -> None:
    """Peers replaying the same operations must sign the same view: the blocks may depend
    only on the operations and flush boundaries, not on reads, cache size or cache state."""

    async def replay(log: MemoryLog, *, reads: bool, cache_nodes: int) -> None:
        bee = Bee(log, leaf_max=4, internal_max=5, cache_nodes=cache_nodes)
        batch = bee.batch()
        for op, i, value in ops:
            if op == "put":
                batch.put(k(i), value)
            elif op == "delete":
                batch.delete(k(i))
            elif op == "flush":
                await batch.flush()
                if reads:  # a fresh bee each time: nothing cached
                    bee = Bee(log, leaf_max=4, internal_max=5, cache_nodes=cache_nodes)
                    batch = bee.batch()
            elif reads:
                await batch.get(k(i))
                await bee.get(k(i))
        await batch.flush()

    plain, busy = MemoryLog(), MemoryLog()
    trio.run(lambda: replay(plain, reads=False, cache_nodes=100_000))
    trio.run(lambda: replay(busy, reads=True, cache_nodes=16))
    assert plain.blocks == busy.blocks
