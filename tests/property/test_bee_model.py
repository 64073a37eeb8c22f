"""Stateful test: a bee on a real log in a real SQLite store always equals a dict model.

Random puts and deletes into a batch, flushes, reads through the batch (read-your-writes) and
through the bee, range queries with every bound combination, reverse and limit, snapshots at
old versions, truncating the log to an old version and writing on, and reopening the storage
folder. Small node sizes make trees several levels deep with a few dozen keys.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from autobase_py.bee import Bee, Snapshot, SnapshotExpiredError
from autobase_py.log import Log
from autobase_py.store import Store

T = TypeVar("T")

ALPHABET = [b"\x00", b"a", b"b", b"\xff"]
KEYS = [b""] + [b"".join(p) for n in (1, 2, 3) for p in itertools.product(ALPHABET, repeat=n)]
keys = st.sampled_from(KEYS)
values = st.sampled_from([b"", b"x", b"y", b"z" * 40])
SEED = bytes(range(32))


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


def model_range(
    model: dict[bytes, bytes], gt: Any, gte: Any, lt: Any, lte: Any, reverse: bool, limit: Any
) -> list[tuple[bytes, bytes]]:
    out = [
        (k, v)
        for k, v in sorted(model.items())
        if (gt is None or k > gt)
        and (gte is None or k >= gte)
        and (lt is None or k < lt)
        and (lte is None or k <= lte)
    ]
    if reverse:
        out.reverse()
    return out if limit is None else out[:limit]


async def collect(it: Any) -> list[tuple[bytes, bytes]]:
    return [item async for item in it]


class BeeModel(RuleBasedStateMachine):
    @initialize(
        leaf_max=st.sampled_from([4, 5, 8]),
        internal_max=st.sampled_from([4, 5, 8]),
        pack_bytes=st.sampled_from([1, 200, 16384]),  # a node per block .. whole flushes
    )
    def open(self, leaf_max: int, internal_max: int, pack_bytes: int) -> None:
        self.leaf_max, self.internal_max, self.pack_bytes = leaf_max, internal_max, pack_bytes
        self.dir = tempfile.mkdtemp(prefix="bee-model-")
        self.store = Store.open(self.dir, primary_seed=SEED)
        self.log: Log = self.store.get(name="view")
        self.bee = Bee(
            self.log,
            leaf_max=self.leaf_max,
            internal_max=self.internal_max,
            pack_bytes=self.pack_bytes,
        )
        self.batch = self.bee.batch()
        self.committed: dict[bytes, bytes] = {}
        self.pending: list[tuple[bytes, bytes | None]] = []
        self.history: dict[int, dict[bytes, bytes]] = {0: {}}  # version -> content
        self.snapshots: list[tuple[Snapshot, dict[bytes, bytes], bool]] = []

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def batched(self) -> dict[bytes, bytes]:
        out = dict(self.committed)
        for key, value in self.pending:
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    @rule(key=keys, value=values)
    def put(self, key: bytes, value: bytes) -> None:
        self.batch.put(key, value)
        self.pending.append((key, value))

    @rule(start=st.integers(0, len(KEYS) - 1), count=st.integers(1, 40), value=values)
    def put_many(self, start: int, count: int, value: bytes) -> None:
        for key in KEYS[start : start + count]:
            self.put(key, value)

    @rule(start=st.integers(0, len(KEYS) - 1), count=st.integers(1, 40), step=st.integers(1, 3))
    def delete_many(self, start: int, count: int, step: int) -> None:
        for key in KEYS[start : start + count : step]:
            self.delete(key)

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self.batch.delete(key)
        self.pending.append((key, None))

    @rule()
    def flush(self) -> None:
        before = self.log.length
        after = run(self.batch.flush)
        new = self.batched()
        self.pending = []
        if new == self.committed:
            assert after == before, "a flush without effective change appended"
        else:
            assert after > before
        self.committed = new
        self.history[after] = dict(new)
        assert self.bee.version == after == self.log.length

    @rule(key=keys, value=values)
    def flush_through_another_bee(self, key: bytes, value: bytes) -> None:
        """Another writer's flush: after a truncate it rewrites block indexes this bee cached
        (possibly up to a length at which this bee recorded the old content's tree hash)."""
        other = Bee(self.log, leaf_max=self.leaf_max, internal_max=self.internal_max)

        async def write() -> int:
            await other.put(key, value)
            return other.version

        after = run(write)
        self.committed = {**self.committed, key: value}
        self.history[after] = dict(self.committed)
        assert self.bee.version == after

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert run(lambda: self.bee.get(key)) == self.committed.get(key)
        assert run(lambda: self.batch.get(key)) == self.batched().get(key)

    @rule(
        low=st.none() | keys,
        high=st.none() | keys,
        low_inclusive=st.booleans(),
        high_inclusive=st.booleans(),
        reverse=st.booleans(),
        limit=st.none() | st.integers(0, 5),
        through_batch=st.booleans(),
    )
    def range(
        self,
        low: bytes | None,
        high: bytes | None,
        low_inclusive: bool,
        high_inclusive: bool,
        reverse: bool,
        limit: int | None,
        through_batch: bool,
    ) -> None:
        bounds = {
            ("gte" if low_inclusive else "gt"): low,
            ("lte" if high_inclusive else "lt"): high,
        }
        source = self.batch if through_batch else self.bee
        model = self.batched() if through_batch else self.committed
        got = run(lambda: collect(source.range(reverse=reverse, limit=limit, **bounds)))
        assert got == model_range(
            model,
            bounds.get("gt"),
            bounds.get("gte"),
            bounds.get("lt"),
            bounds.get("lte"),
            reverse,
            limit,
        )

    @rule(data=st.data())
    def snapshot(self, data: st.DataObject) -> None:
        version = data.draw(st.sampled_from(sorted(self.history)))
        snap = self.bee.snapshot(version)
        self.snapshots.append((snap, self.history[version], False))

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data(), key=keys)
    def read_snapshot(self, data: st.DataObject, key: bytes) -> None:
        i = data.draw(st.integers(0, len(self.snapshots) - 1))
        snap, content, maybe_gone = self.snapshots[i]
        try:
            got = run(lambda: collect(snap.range()))
            value = run(lambda: snap.get(key))
        except SnapshotExpiredError:
            assert maybe_gone, "a snapshot below every truncate expired"
            assert (
                self.log.length < snap.version
                or self.log.tree_hash(snap.version) != run(lambda: self._hash_at(snap))
            )
            return
        assert got == sorted(content.items())
        assert value == content.get(key)

    async def _hash_at(self, snap: Snapshot) -> bytes | None:
        return snap._tree_hash

    @precondition(lambda self: len(self.history) > 1)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        version = data.draw(st.sampled_from(sorted(self.history)))
        self.log.truncate(version)
        self.history = {v: c for v, c in self.history.items() if v <= version}
        self.committed = dict(self.history[version])
        self.snapshots = [
            (s, c, gone or s.version > version) for s, c, gone in self.snapshots
        ]
        assert self.bee.version == version

    @rule()
    def reopen(self) -> None:
        """Close the storage folder and open it again: the flushed tree is all that remains."""
        self.store.close()
        self.store = Store.open(self.dir, primary_seed=SEED)
        self.log = self.store.get(name="view")
        self.bee = Bee(
            self.log,
            leaf_max=self.leaf_max,
            internal_max=self.internal_max,
            pack_bytes=self.pack_bytes,
        )
        self.batch = self.bee.batch()
        self.pending = []
        self.snapshots = []

    @invariant()
    def version_matches_log(self) -> None:
        if hasattr(self, "bee"):
            assert self.bee.version == self.log.length


BeeModel.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
TestBeeModel = BeeModel.TestCase


def _random_workout(
    seed: int, leaf_max: int, internal_max: int, pack_bytes: int, directory: str
) -> None:
    """Many random batches (ascending runs, random keys, range deletes) on a real log, checked
    against a dict after every flush: reaches the deep-tree borrow/merge paths that short
    hypothesis runs rarely build."""
    import random

    rng = random.Random(seed)
    store = Store.open(directory, primary_seed=SEED)
    try:
        log = store.get(name="view")
        bee = Bee(log, leaf_max=leaf_max, internal_max=internal_max, pack_bytes=pack_bytes)
        model: dict[bytes, bytes] = {}

        async def main() -> None:
            for step in range(150):
                batch = bee.batch()
                shape = rng.random()
                if shape < 0.35:  # an ascending run: fills nodes (end-of-node splits)
                    start = rng.randrange(400)
                    for i in range(start, start + rng.randrange(1, 60)):
                        key, value = b"%04d" % i, b"%d" % step
                        batch.put(key, value)
                        model[key] = value
                elif shape < 0.7:  # a contiguous delete: empties nodes next to full ones
                    start = rng.randrange(400)
                    for i in range(start, start + rng.randrange(1, 40)):
                        batch.delete(b"%04d" % i)
                        model.pop(b"%04d" % i, None)
                else:
                    for _ in range(rng.randrange(1, 30)):
                        key = b"%04d" % rng.randrange(400)
                        if rng.random() < 0.5:
                            batch.delete(key)
                            model.pop(key, None)
                        else:
                            batch.put(key, b"r")
                            model[key] = b"r"
                await batch.flush()
                assert [x async for x in bee.range()] == sorted(model.items()), step
                assert [x async for x in bee.range(reverse=True)] == sorted(
                    model.items(), reverse=True
                )
                for key in rng.sample(sorted(model), min(10, len(model))):
                    assert await bee.get(key) == model[key]
                for _ in range(4):  # bounds on stored keys are often separators too
                    pool = sorted(model) or [b"0000"]
                    low, high = rng.choice(pool), rng.choice(pool)
                    kinds = (rng.choice(["gt", "gte"]), rng.choice(["lt", "lte"]))
                    reverse = rng.random() < 0.5
                    limit = rng.choice([None, 1, 7])
                    bounds = {kinds[0]: low, kinds[1]: high}
                    got = [x async for x in bee.range(reverse=reverse, limit=limit, **bounds)]
                    assert got == model_range(
                        model,
                        bounds.get("gt"),
                        bounds.get("gte"),
                        bounds.get("lt"),
                        bounds.get("lte"),
                        reverse,
                        limit,
                    )

        trio.run(main)
        reopened = Bee(log)
        assert trio.run(lambda: collect(reopened.range())) == sorted(model.items())
    finally:
        store.close()


def test_random_workout_small_nodes(tmp_path: Any) -> None:
    shapes = [(4, 4, 1), (8, 4, 16384), (8, 8, 300), (5, 6, 16384)]
    for seed, (leaf_max, internal_max, pack_bytes) in enumerate(shapes):
        _random_workout(seed, leaf_max, internal_max, pack_bytes, str(tmp_path / str(seed)))
