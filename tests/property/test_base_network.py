"""Hypothesis: 3-4 in-process bases with random appends, partial syncs, partitions and restarts.

Invariants after every step:
- confirmed history never changes: every checkpoint a base ever computed still matches its
  view log (same tree hash at the checkpoint's view length);
- peers agree on confirmed state: two checkpoints for the same boundary have the same view
  length, view tree hash and system hash, whichever peer computed them.
At the end, after healing, every base has confirmed every value and all views are identical.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

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

from autobase_py.base import core as base_core
from autobase_py.base import tip as base_tip
from autobase_py.base.checkpoint import Checkpoint
from autobase_py.base.core import Autobase
from autobase_py.bee import Bee
from autobase_py.store import Store
from autobase_py.testing import kv
from autobase_py.testing.sync import converge, sync

Base = Autobase[Bee]


class BaseNetwork(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="base-net-"))
        self.stores: list[Store] = []
        self.bases: list[Base] = []
        self.seen: list[list[Checkpoint]] = []
        self.agreed: dict[int, Checkpoint] = {}
        self.counter = 0

    def run(self, fn, *args):  # type: ignore[no-untyped-def]
        return trio.run(fn, *args)

    async def _open(self, i: int, bootstrap: bytes | None) -> Base:
        base: Base = await Autobase.open(
            self.stores[i], bootstrap, apply=kv.apply, open_view=kv.open_view
        )
        return base

    @initialize(
        n=st.integers(3, 4),
        non_indexer=st.booleans(),
        window=st.sampled_from([1, 2, 64]),
        cycle=st.sampled_from([1, 2, 5, base_core.CYCLE_NODES]),
    )
    def setup(self, n: int, non_indexer: bool, window: int, cycle: int) -> None:
        # a tiny window forces the linearizer to read old round steps back from SQLite
        self._window = base_core.ROUND_WINDOW
        base_core.ROUND_WINDOW = window
        # tiny cycles make update and append split nearly every drain across cycles, with
        # nodes left pending (returned by the linearizer, not applied) between them
        self._cycle = base_core.CYCLE_NODES
        base_core.CYCLE_NODES = cycle

        async def go() -> None:
            for i in range(n):
                self.stores.append(Store.open(self.root / str(i)))
            first = await self._open(0, None)
            self.bases.append(first)
            for i in range(1, n):
                self.bases.append(await self._open(i, first.key))
            ops = [
                kv.add_writer(b.local_key, indexer=not (non_indexer and i == n - 1))
                for i, b in enumerate(self.bases[1:], start=1)
            ]
            await first.append(ops)
            await converge(self.bases)

        self.run(go)
        self.seen = [[] for _ in self.bases]

    @rule(i=st.integers(0, 3), size=st.integers(1, 3))
    def append(self, i: int, size: int) -> None:
        base = self.bases[i % len(self.bases)]
        if not base.writable:
            return
        values = []
        for _ in range(size):
            self.counter += 1
            values.append(kv.put(b"k%d" % (self.counter % 5), b"v%d" % self.counter))
        self.run(base.append, values)

    @rule(i=st.integers(0, 3), j=st.integers(0, 3))
    def sync_pair(self, i: int, j: int) -> None:
        a, b = self.bases[i % len(self.bases)], self.bases[j % len(self.bases)]
        if a is b:
            self.run(a.update)
        else:
            self.run(sync, a, b)

    @rule(data=st.data())
    def partition_converge(self, data: st.DataObject) -> None:
        group = data.draw(st.sets(st.integers(0, len(self.bases) - 1), min_size=1))
        self.run(converge, [self.bases[i] for i in sorted(group)])

    @precondition(lambda self: bool(self.bases))
    @rule(i=st.integers(0, 3))
    def restart(self, i: int) -> None:
        i %= len(self.bases)

        async def go() -> None:
            old = self.bases[i]
            await old.close()
            self.stores[i].close()
            self.stores[i] = Store.open(self.root / str(i))
            self.bases[i] = await self._open(i, old.key)

        self.run(go)

    @invariant()
    def confirmed_history_never_changes_and_peers_agree(self) -> None:
        for i, base in enumerate(self.bases):
            cp = base.checkpoint
            if cp is not None and (not self.seen[i] or self.seen[i][-1] != cp):
                self.seen[i].append(cp)
            for old in self.seen[i][-5:]:
                assert base.view_log.length >= old.view_length
                assert base.view_log.tree_hash(old.view_length) == old.view_tree_hash
            # update and append return with everything applied: nothing left pending
            assert not base._pending
            # the stored tip records are exactly the ones in memory (what a restart reads)
            first, stored, _ = base_tip.read(base.storage)
            assert stored == base._records
            assert first == (base.confirmed_length if stored else None)
            if cp is not None:
                other = self.agreed.setdefault(cp.confirmed_length, cp)
                assert other == cp, "two peers confirmed different states at one boundary"

    def teardown(self) -> None:
        """Heal every partition, then all bases must agree on everything."""
        try:
            if self.bases:
                self.run(converge, self.bases)
                hashes = {b.view_log.tree_hash() for b in self.bases}
                assert len(hashes) == 1
                assert all(b.unconfirmed_values == 0 for b in self.bases)
                lengths = {b.applied_length for b in self.bases}
                assert len(lengths) == 1
                # a newcomer applies the final order from scratch: every view must equal it
                self.stores.append(Store.open(self.root / "fresh"))
                fresh = self.run(self._open, len(self.stores) - 1, self.bases[0].key)
                self.bases.append(fresh)
                self.run(converge, self.bases)
                assert fresh.applied_length == self.bases[0].applied_length
                assert {b.view_log.tree_hash() for b in self.bases} == hashes

                async def close_all() -> None:
                    for b in self.bases:
                        await b.close()

                self.run(close_all)
        finally:
            base_core.ROUND_WINDOW = getattr(self, "_window", base_core.ROUND_WINDOW)
            base_core.CYCLE_NODES = getattr(self, "_cycle", base_core.CYCLE_NODES)
            for store in self.stores:
                store.close()
            shutil.rmtree(self.root, ignore_errors=True)


BaseNetwork.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
TestBaseNetwork = BaseNetwork.TestCase
