"""Stateful test: the registry on a real bee always equals a dict model, through every index.

Random puts, upserts (same name, changed type/owner/drive key/description) and deletes, alone
or several in one transaction (one bee batch, reads seeing its own writes), over a store that
may start with version-1 data written as a v1 node would, and reopens now and then. After
every step every lookup is compared with the model: by name, by drive key (first by name), by
type and by owner (including "no owner" and the empty-string owner), and the bee holds exactly
one record and three index keys per entry (no stale index key survives an upsert or delete).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from autobase_py import encoding
from autobase_py.bee import Bee, encode_tuple
from autobase_py.store import Store
from registry import Entry, Registry
from registry.schema import encode_record, load_spec

T = TypeVar("T")

NAMES = ["a", "b", "ab", "b\x00", "zz", "é", "m1", "m10"]
TYPES = ["t", "t1", "t\x00", "text-generation"]
OWNERS: list[str | None] = [None, "", "John", "Jo", "Ann"]
DRIVE_KEYS = [bytes([b]) * 32 for b in (0x00, 0xAA, 0xBB, 0xFF)]
DESCRIPTIONS = [None, "", "a model"]
SEED = bytes(range(32))

entries = st.builds(
    Entry,
    name=st.sampled_from(NAMES),
    drive_key=st.sampled_from(DRIVE_KEYS),
    type=st.sampled_from(TYPES),
    description=st.sampled_from(DESCRIPTIONS),
    owner=st.sampled_from(OWNERS),
)
v1_entries = st.builds(
    Entry,
    name=st.sampled_from(NAMES),
    drive_key=st.sampled_from(DRIVE_KEYS),
    type=st.sampled_from(TYPES),
    description=st.sampled_from(DESCRIPTIONS),
)
ops = st.one_of(
    st.tuples(st.just("put"), entries),
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


class RegistryModel(RuleBasedStateMachine):
    @initialize(old=st.lists(v1_entries, max_size=6, unique_by=lambda e: e.name))
    def open(self, old: list[Entry]) -> None:
        self.dir = tempfile.mkdtemp(prefix="registry-model-")
        self.store = Store.open(self.dir, primary_seed=SEED)
        self.bee = Bee(self.store.get(name="view"), leaf_max=4, internal_max=4)
        self.model: dict[str, Entry] = {}
        if old:  # version-1 data, exactly as a v1 node wrote it
            v1 = load_spec().version(1)
            batch = self.bee.batch()
            for e in old:
                batch.put(encode_tuple((1, e.name)), encode_record(v1, "entry", e.to_dict()))
                batch.put(encode_tuple((2, e.drive_key, e.name)), b"")
                batch.put(encode_tuple((3, e.type, e.name)), b"")
                self.model[e.name] = e
            batch.put(encode_tuple((0, "schema")), encoding.encode(1))
            run(batch.flush)
        self.reg = Registry(self.bee)
        self.migrated = not old
        self.has_meta = bool(old)

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _apply_model(self, op: tuple[str, Any]) -> bool:
        kind, arg = op
        if kind == "put":
            changed = self.model.get(arg.name) != arg
            self.model[arg.name] = arg
            return changed
        return self.model.pop(arg, None) is not None

    @rule(op=ops)
    def single(self, op: tuple[str, Any]) -> None:
        expected = self._apply_model(op)
        version = self.bee.version

        async def go() -> bool:
            if op[0] == "put":
                return await self.reg.put(op[1])
            return await self.reg.delete(op[1])

        assert run(go) is expected
        if expected:
            self.migrated = self.has_meta = True
        else:
            assert self.bee.version == version, "a no-op wrote to the bee"

    @rule(batch=st.lists(ops, min_size=1, max_size=8))
    def transaction(self, batch: list[tuple[str, Any]]) -> None:
        async def go() -> None:
            async with self.reg.transaction() as tx:
                for op in batch:
                    expected = self._apply_model(op)
                    if op[0] == "put":
                        assert await tx.put(op[1]) is expected
                    else:
                        assert await tx.delete(op[1]) is expected
                    if expected:
                        self.migrated = self.has_meta = True
                    name = op[1].name if op[0] == "put" else op[1]
                    assert await tx.get(name) == self.model.get(name)  # read-your-writes

        run(go)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = Store.open(self.dir, primary_seed=SEED)
        self.bee = Bee(self.store.get(name="view"), leaf_max=4, internal_max=4)
        self.reg = Registry(self.bee)

    @invariant()
    def every_index_equals_the_model(self) -> None:
        if not hasattr(self, "reg"):
            return
        model = self.model
        reg = self.reg

        def where(field: str, value: Any) -> list[Entry]:
            return [model[n] for n in sorted(model) if getattr(model[n], field) == value]

        async def check() -> None:
            for name in NAMES:
                assert await reg.get(name) == model.get(name)
            for key in DRIVE_KEYS:
                want = where("drive_key", key)
                assert await reg.get_by_drive_key(key) == (want[0] if want else None)
            for t in TYPES:
                got = [e async for e in reg.entries_of_type(t)]
                assert got == where("type", t)
            for owner in OWNERS:
                got = [e async for e in reg.entries_of_owner(owner)]
                assert got == where("owner", owner)
            assert [e async for e in reg.entries()] == [model[n] for n in sorted(model)]
            keys = [k async for k, _ in self.bee.range()]
            index_keys = 3 if self.migrated else 2  # v1 data has no owner index until migrated
            meta = 1 if self.has_meta else 0
            assert len(keys) == len(model) * (1 + index_keys) + meta

        run(check)


TestRegistryModel = RegistryModel.TestCase
TestRegistryModel.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
