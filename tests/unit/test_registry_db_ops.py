"""Op envelopes carry the writer's schema version; writes follow it deterministically.

(The router's base behaviour is tested in test_registry_entry_ops.py; this file covers the
schema-version part used by the database and the service.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autobase_py import encoding
from autobase_py.bee import Bee
from autobase_py.store import Store
from registry import Entry, Registry, ValidationError
from registry.ops import Applied, NewerSchema, OpCodec, Request, Router, Skipped
from registry.schema import load_spec, spec_at

KEY = bytes([0xAA]) * 32
SPEC = load_spec()


def router(calls: list[Request]) -> Router[None]:
    async def handle(req: Request, ctx: None) -> None:
        calls.append(req)

    return Router(SPEC, {op.name: handle for op in SPEC.ops})


def test_the_codec_writes_its_schema_version_and_v1_code_leaves_it_out() -> None:
    value = OpCodec(SPEC).encode("delete-entry", {"name": "x"})
    assert encoding.decode(value) == {"op": 3, "req": {"name": "x"}, "v": 2}
    old = OpCodec(spec_at(SPEC, 1)).encode("delete-entry", {"name": "x"})
    assert encoding.decode(old) == {"op": 3, "req": {"name": "x"}}


@pytest.mark.parametrize(("envelope", "version"), [
    ({"op": 3, "req": {"name": "x"}}, 1),
    ({"op": 3, "req": {"name": "x"}, "v": 1}, 1),
    ({"op": 3, "req": {"name": "x"}, "v": 2}, 2),
])
async def test_handlers_see_the_writers_version(envelope: dict[str, Any], version: int) -> None:
    calls: list[Request] = []
    outcome = await router(calls).dispatch(encoding.encode(envelope), None)
    assert outcome == Applied("delete-entry")
    assert calls == [{"name": "x"}] and calls[0].schema_version == version


async def test_a_newer_schema_version_is_not_skipped_but_reported() -> None:
    calls: list[Request] = []
    value = encoding.encode({"op": 3, "req": {"name": "x"}, "v": 3})
    outcome = await router(calls).dispatch(value, None)
    assert outcome == NewerSchema(3, 2) and "upgrade" in outcome.reason
    old_router: Router[None] = Router(
        spec_at(SPEC, 1), {op.name: router(calls)._handlers[op.name] for op in SPEC.ops}
    )
    v2_value = OpCodec(SPEC).encode("put-entry", {"entry": Entry("e", KEY, "t", owner="o")})
    assert await old_router.dispatch(v2_value, None) == NewerSchema(2, 1)
    assert calls == []


@pytest.mark.parametrize("version", [0, -1, "2", True, None, 1.5])
async def test_a_bad_version_field_is_skipped(version: Any) -> None:
    calls: list[Request] = []
    value = encoding.encode({"op": 3, "req": {"name": "x"}, "v": version})
    outcome = await router(calls).dispatch(value, None)
    assert isinstance(outcome, Skipped) and "version" in outcome.reason
    assert calls == []


async def test_an_extra_envelope_field_is_still_skipped() -> None:
    value = encoding.encode({"op": 3, "req": {"name": "x"}, "v": 2, "w": 1})
    assert isinstance(await router([]).dispatch(value, None), Skipped)


@pytest.fixture
def bee(tmp_path: Path) -> Iterator[Bee]:
    store = Store.open(tmp_path / "s")
    yield Bee(store.get(name="view"))
    store.close()


async def test_writes_follow_the_writers_version(bee: Bee) -> None:
    reg = Registry(bee)
    async with reg.transaction() as tx:  # a fresh view written by v1 ops stays at v1
        await tx.put(Entry("e1", KEY, "t"), version=1)
        with pytest.raises(ValidationError) as info:
            await tx.put(Entry("e2", KEY, "t", owner="o"), version=1)
        assert info.value.field == "owner"
    assert await reg.schema_version() == 1
    raw = await bee.get(reg.layout.primary("e1"))
    assert raw is not None and encoding.decode(raw)["v"] == 1
    assert [k async for k, _ in bee.range()].__len__() == 1 + 1 + 2  # no owner index yet
    async with reg.transaction() as tx:  # the first v2 write migrates
        await tx.put(Entry("e2", KEY, "t", owner="o"), version=2)
        await tx.put(Entry("e3", KEY, "t"), version=1)  # a v1 op after it: view stays v2
    assert await reg.schema_version() == 2
    assert [e.name async for e in reg.entries_of_owner(None)] == ["e1", "e3"]
    assert [e.name async for e in reg.entries_of_owner("o")] == ["e2"]
    raw = await bee.get(reg.layout.primary("e3"))
    assert raw is not None and encoding.decode(raw)["v"] == 2
