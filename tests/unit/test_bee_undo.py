"""The undo path of a base's view: truncate the log back to an earlier flush and flush again.

The bee keeps the nodes it cached from blocks below the truncation point when the log's tree
hash there is the one it recorded at that flush; these tests check that what it then writes
and reads is exactly what a bee without any cache (a fresh replay) writes and reads, and that
a rewrite it did not make is never served from its cache.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from autobase_py.bee import Bee, core
from autobase_py.bee.node import Node, decode_block, encode_body, encode_pack
from autobase_py.bee.tree import TreeWriter
from autobase_py.log import Log
from autobase_py.store import Store
from autobase_py.testing.counting_log import CountingLog

SEED = bytes(range(32))


def view_log(path: Path) -> tuple[Store, Log]:
    store = Store.open(path, primary_seed=SEED)
    log = store.get(name="view")
    log.durable_appends = False
    log.signed_appends = False
    return store, log


def blocks(log: Log) -> list[bytes]:
    """The log's blocks, each checked to be exactly the canonical encoding of its nodes
    (flushes splice new child addresses into old bodies; that must change nothing)."""
    out = []
    for index in range(log.length):
        data = log.get(index)
        nodes = decode_block(data, index)
        assert encode_pack([encode_body(node) for node in nodes], root=nodes[-1].root) == data
        out.append(data)
    return out


Flush = list[tuple[bytes, bytes | None]]


async def apply(bee: Bee, ops: Flush) -> int:
    batch = bee.batch()
    for key, value in ops:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    return await batch.flush()


@pytest.mark.parametrize(
    ("pack_bytes", "cache_nodes"),
    [(8192, 32768), (1, 32768), (200, 16)],  # packed / a node per block / constant trimming
)
async def test_undo_and_reapply_writes_the_blocks_of_a_fresh_replay(
    tmp_path: Path, pack_bytes: int, cache_nodes: int
) -> None:
    rng = random.Random(pack_bytes + cache_nodes)
    store, log = view_log(tmp_path / "undo")
    bee = Bee(log, leaf_max=4, internal_max=4, pack_bytes=pack_bytes, cache_nodes=cache_nodes)
    applied: list[tuple[int, Flush]] = []  # (version before, ops) of the flushes kept
    counters = [0, 0, 0]
    try:
        for step in range(120):
            if applied and rng.random() < 0.3:
                # Undo the last few flushes (as a base does when the order changes) and
                # re-apply them in another order, sometimes with a new one in between.
                back = rng.randint(1, min(4, len(applied)))
                undone = [ops for _, ops in applied[-back:]]
                log.truncate(applied[-back][0])
                del applied[-back:]
                rng.shuffle(undone)
                if rng.random() < 0.5:
                    undone.insert(rng.randrange(len(undone) + 1), [(b"extra-%03d" % step, b"x")])
                redo = undone
            else:
                writer = rng.randrange(3)
                counters[writer] += 1
                name = b"model-%d%05d" % (writer, counters[writer])
                ops: Flush = [(name, b"v%d" % step * rng.randint(1, 20))]
                if rng.random() < 0.2:
                    ops = [(b"model-%d%05d" % (writer, rng.randint(1, counters[writer])), None)]
                elif rng.random() < 0.2:
                    ops += [(b"model-%d%05d" % (rng.randrange(3), rng.randint(1, 40)), b"w")
                            for _ in range(rng.randint(1, 30))]
                redo = [ops]
            for ops in redo:
                before = log.length
                await apply(bee, ops)
                applied.append((before, ops))
        got_blocks = blocks(log)
        got_entries = [item async for item in bee.range()]
    finally:
        store.close()

    store, log = view_log(tmp_path / "fresh")
    try:
        fresh = Bee(log, leaf_max=4, internal_max=4, pack_bytes=pack_bytes)
        for _, ops in applied:
            await apply(fresh, ops)
        assert blocks(log) == got_blocks
        assert [item async for item in Bee(log).range()] == got_entries
    finally:
        store.close()


async def test_flush_after_truncating_to_a_flushed_version_reads_no_block(
    tmp_path: Path,
) -> None:
    store, inner = view_log(tmp_path / "s")
    try:
        log = CountingLog(inner)
        bee = Bee(log, leaf_max=4, internal_max=4)
        for i in range(200):
            await bee.put(b"k%04d" % i, b"v")
        version = bee.version
        await bee.put(b"k0100", b"undone")
        await bee.put(b"k9999", b"undone")
        inner.truncate(version)
        reads = log.reads
        await bee.put(b"k0150", b"redone")
        assert await bee.get(b"k0100") == b"v"
        assert await bee.get(b"k9999") is None
        assert await bee.get(b"k0150") == b"redone"
        assert log.reads == reads, "the nodes below the truncation point were read again"
        # A truncate that only bumps the fork keeps everything too.
        inner.truncate(inner.length)
        assert await bee.get(b"k0150") == b"redone"
        await bee.put(b"k0151", b"after")
        assert log.reads == reads
    finally:
        store.close()


async def test_per_version_bookkeeping_stays_bounded_over_many_flushes(tmp_path: Path) -> None:
    """Every flush adds a root and a slot count; a long-lived bee must not keep them all (it
    did: one root node per version, the base bench's memory grew by ~5 MiB per 1,000 values
    per peer). Old versions stay readable by re-reading their root block."""
    store, log = view_log(tmp_path / "s")
    try:
        bee = Bee(log, leaf_max=4, internal_max=4)
        versions = []
        for i in range(3 * core.MAX_ROOTS):
            await bee.put(b"k%05d" % (i % 97), b"v%d" % i)
            versions.append(bee.version)
            if i % 50 == 49:  # an undo now and then, as a base does
                log.truncate(versions[-2])
                versions.pop()
        assert len(bee._roots) <= core.MAX_ROOTS
        live = len(bee._cache) + len(bee._old) + len(bee._roots) + len(bee._blocks)
        assert len(bee._slots) <= 2 * live + 1024 + 1
        old = bee.snapshot(versions[10])  # a version whose root was trimmed long ago
        assert await old.get(b"k00005") == b"v5"
        assert await bee.get(b"k00005") is not None
    finally:
        store.close()


async def test_rewrite_by_another_bee_is_never_served_from_the_cache(tmp_path: Path) -> None:
    """Truncate below the bee's flushes, let another bee write other blocks up to a length
    the first one had recorded: the tree hashes differ, so it drops its cache."""
    store, log = view_log(tmp_path / "s")
    try:
        bee = Bee(log)
        lengths = []
        for i in range(10):
            lengths.append(await apply(bee, [(b"k%02d" % i, b"first")]))
        assert lengths == list(range(1, 11))  # one block per flush
        log.truncate(5)
        other = Bee(log)
        for i in range(5, 10):
            await apply(other, [(b"k%02d" % i, b"second")])
        assert log.length == 10  # a length the first bee recorded, other content
        got = {key: value async for key, value in bee.range()}
        assert got == {b"k%02d" % i: b"first" if i < 5 else b"second" for i in range(10)}
        assert await bee.get(b"k07") == b"second"
        # And through a length the first bee never saw: truncate, rewrite, truncate again.
        log.truncate(3)
        await apply(other, [(b"k01", b"third"), (b"k08", b"third")])
        log.truncate(log.length)
        assert await bee.get(b"k01") == b"third"
        assert await bee.get(b"k08") == b"third"
        assert await bee.get(b"k05") is None
        await apply(bee, [(b"k02", b"fourth")])
        assert {key: value async for key, value in Bee(log).range()} == {
            b"k00": b"first", b"k01": b"third", b"k02": b"fourth", b"k08": b"third"
        }
    finally:
        store.close()


def _forget_marks(node: Node) -> None:
    """Make seal find this dirty tree's dirty children by scanning (the general path)."""
    if node.seq is not None or node.children is None:
        return
    node.marks = None
    for child in node.children:
        if isinstance(child, Node):
            _forget_marks(child)


@pytest.mark.parametrize("seed", range(6))
def test_marked_dirty_children_seal_like_a_scan(seed: int) -> None:
    """Seal stores the children copy-on-write marked without scanning; the blocks must be
    those of the scan (post-order, left to right) for puts, splits, deletes and merges."""
    rng = random.Random(seed)
    stored: dict[int, Node] = {}
    blocks: list[bytes] = []

    def load(address: int) -> Node:
        return stored[address]

    def append(data: list[bytes]) -> None:
        for block in data:
            for node in decode_block(block, len(blocks)):
                stored[node.seq] = node  # type: ignore[index]
            blocks.append(block)

    root: Node | None = None
    for _ in range(60):
        ops = [
            (b"%04d" % rng.randrange(400), None if rng.random() < 0.3 else b"v" * rng.randrange(9))
            for _ in range(rng.choice([1, 1, 3, 40]))
        ]
        pack_bytes = rng.choice([1, 300, 8192])
        sealed = []
        for scan in (False, True):
            writer = TreeWriter(root, load, leaf_max=4, internal_max=4)
            for key, value in ops:
                if value is None:
                    writer.delete(key)
                else:
                    writer.put(key, value)
            if scan and writer.root is not None:
                _forget_marks(writer.root)
            sealed.append(writer.seal(len(blocks), pack_bytes))
        (marked, _), (scanned, _) = sealed
        assert marked == scanned
        append(marked)
        if marked:
            root = stored[max(stored)]
