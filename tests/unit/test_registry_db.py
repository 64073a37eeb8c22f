"""The registry database on a real bee: the HyperDB workshop tests, ported, and the index rules
(exact match, upserts move index keys, identical puts write nothing, v1 data after upgrade)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobase_py import encoding, ids
from autobase_py.bee import Bee, encode_tuple
from autobase_py.errors import DecodeError, NotWritableError
from autobase_py.store import Store
from registry import Entry, Registry, SchemaError, ValidationError
from registry.db import NO_OWNER, Layout
from registry.schema import canonical_order, dumps_ordered, encode_record, load_spec, spec_at

KEY_A = bytes([0xAA]) * 32
KEY_B = bytes([0xBB]) * 32
KEY_F = bytes([0xFF]) * 32


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def bee(store: Store) -> Bee:
    return Bee(store.get(name="view"))


@pytest.fixture
def reg(bee: Bee) -> Registry:
    return Registry(bee)


async def collect(it: AsyncIterator[Entry]) -> list[Entry]:
    return [e async for e in it]


async def names(it: AsyncIterator[Entry]) -> list[str]:
    return [e.name for e in await collect(it)]


# --- the HyperDB workshop tests -------------------------------------------------------------


async def test_put_and_get_record(reg: Registry) -> None:
    await reg.put({"name": "e1", "drive_key": KEY_A, "type": "type1"})
    entry = await reg.get("e1")
    assert entry == Entry("e1", KEY_A, "type1")
    assert entry is not None and entry.description is None and entry.owner is None
    assert await reg.get("nothing") is None


async def test_put_with_description_and_text_keys(reg: Registry) -> None:
    await reg.put({"name": "e1", "drive_key": KEY_A.hex(), "type": "t", "description": "d"})
    await reg.put({"name": "e2", "drive_key": ids.encode(KEY_B), "type": "t"})
    assert await reg.get("e1") == Entry("e1", KEY_A, "t", "d")
    e2 = await reg.get("e2")
    assert e2 is not None and e2.drive_key == KEY_B


async def test_get_by_drive_key(reg: Registry) -> None:
    e1 = Entry("e1", KEY_A, "type1")
    e2 = Entry("e2", KEY_B, "type1")
    await reg.put(e1)
    await reg.put(e2)
    assert await reg.get_by_drive_key(KEY_A) == e1
    assert await reg.get_by_drive_key(KEY_B) == e2
    assert await reg.get_by_drive_key(KEY_F) is None
    assert await reg.get_by_drive_key(KEY_A.hex()) == e1
    assert await reg.get_by_drive_key(ids.encode(KEY_B)) == e2


async def test_get_by_drive_key_returns_first_by_name(reg: Registry) -> None:
    await reg.put(Entry("zeta", KEY_A, "t"))
    await reg.put(Entry("alpha", KEY_A, "t"))
    found = await reg.get_by_drive_key(KEY_A)
    assert found is not None and found.name == "alpha"


async def test_get_entries_of_type(reg: Registry) -> None:
    e1 = Entry("e1", KEY_A, "type1")
    e2 = Entry("e2", KEY_B, "type1")
    e3 = Entry("e3", KEY_F, "type2")
    for e in (e1, e2, e3):
        await reg.put(e)
    assert await collect(reg.entries_of_type("type1")) == [e1, e2]
    assert await collect(reg.entries_of_type("type2")) == [e3]
    assert await collect(reg.entries_of_type("notype")) == []


async def test_delete(reg: Registry) -> None:
    await reg.put(Entry("e1", KEY_A, "type1", owner="John"))
    assert await reg.get("e1") is not None
    assert await reg.delete("e1") is True
    assert await reg.get("e1") is None
    assert await reg.get_by_drive_key(KEY_A) is None
    assert await collect(reg.entries_of_type("type1")) == []
    assert await collect(reg.entries_of_owner("John")) == []
    version = reg.version
    assert await reg.delete("e1") is False  # missing name: no-op, nothing appended
    assert reg.version == version


async def test_get_entries_of_owner(reg: Registry) -> None:
    e1 = Entry("e1", KEY_A, "type1", owner="John")
    e2 = Entry("e2", KEY_B, "type1", owner="Ann")
    e3 = Entry("e3", KEY_F, "type2", owner="John")
    e4 = Entry("e4", KEY_F, "type2")
    for e in (e1, e2, e3, e4):
        await reg.put(e)
    assert await collect(reg.entries_of_owner("John")) == [e1, e3]
    assert await collect(reg.entries_of_owner("Ann")) == [e2]
    assert await collect(reg.entries_of_owner("notAnOwner")) == []
    assert await collect(reg.entries_of_owner(None)) == [e4]


# --- index rules ----------------------------------------------------------------------------


async def test_exact_match_never_matches_a_prefix(reg: Registry) -> None:
    await reg.put(Entry("a", KEY_A, "t1", owner="Jo"))
    await reg.put(Entry("b", KEY_A, "t", owner="John"))
    await reg.put(Entry("c", KEY_A, "t\x00"))
    assert await names(reg.entries_of_type("t")) == ["b"]
    assert await names(reg.entries_of_type("t1")) == ["a"]
    assert await names(reg.entries_of_type("t\x00")) == ["c"]
    assert await names(reg.entries_of_owner("Jo")) == ["a"]
    assert await names(reg.entries_of_owner("John")) == ["b"]
    assert await names(reg.entries_of_owner(None)) == ["c"]


async def test_empty_owner_string_is_not_no_owner(reg: Registry) -> None:
    await reg.put(Entry("a", KEY_A, "t", owner=""))
    await reg.put(Entry("b", KEY_A, "t"))
    assert await names(reg.entries_of_owner("")) == ["a"]
    assert await names(reg.entries_of_owner(None)) == ["b"]


async def test_results_sorted_by_name(reg: Registry) -> None:
    for name in ["m", "b", "z", "a", "k"]:
        await reg.put(Entry(name, KEY_A, "t", owner="o"))
    assert await names(reg.entries_of_type("t")) == ["a", "b", "k", "m", "z"]
    assert await names(reg.entries_of_owner("o")) == ["a", "b", "k", "m", "z"]
    assert await names(reg.entries()) == ["a", "b", "k", "m", "z"]


async def test_identical_put_writes_nothing(reg: Registry, bee: Bee) -> None:
    e = Entry("e1", KEY_A, "t", "desc", "John")
    assert await reg.put(e) is True
    version = bee.version
    assert await reg.put(e) is False
    assert await reg.put(e.to_dict()) is False
    assert bee.version == version


async def test_upsert_moves_index_keys(reg: Registry, bee: Bee) -> None:
    await reg.put(Entry("e1", KEY_A, "t1", owner="John"))
    await reg.put(Entry("e1", KEY_B, "t2", "now described", "Ann"))
    assert await reg.get_by_drive_key(KEY_A) is None
    assert await collect(reg.entries_of_type("t1")) == []
    assert await collect(reg.entries_of_owner("John")) == []
    moved = Entry("e1", KEY_B, "t2", "now described", "Ann")
    assert await reg.get_by_drive_key(KEY_B) == moved
    assert await collect(reg.entries_of_type("t2")) == [moved]
    assert await collect(reg.entries_of_owner("Ann")) == [moved]
    await reg.put(Entry("e1", KEY_B, "t2"))  # owner removed: back to the no-owner key space
    assert await collect(reg.entries_of_owner("Ann")) == []
    assert await names(reg.entries_of_owner(None)) == ["e1"]
    # exactly one primary record and three index keys remain (nothing stale)
    keys = [k async for k, _ in bee.range()]
    assert len(keys) == 1 + 3 + 1  # record, 3 index keys, schema meta


async def test_delete_removes_every_key(reg: Registry, bee: Bee) -> None:
    await reg.put(Entry("e1", KEY_A, "t1", owner="John"))
    await reg.put(Entry("e2", KEY_B, "t1"))
    await reg.delete("e1")
    await reg.delete("e2")
    keys = [k async for k, _ in bee.range()]
    assert keys == [encode_tuple((0, "schema"))]


async def test_one_transaction_is_one_append(reg: Registry, store: Store) -> None:
    log = store.get(name="view")
    async with reg.transaction() as tx:
        await tx.put(Entry("a", KEY_A, "t"))
        await tx.put(Entry("b", KEY_B, "t"))
        assert await names(tx.entries_of_type("t")) == ["a", "b"]  # reads see the batch
        assert await reg.get("a") is None  # not flushed yet
        await tx.delete("a")
        assert await tx.get("a") is None
    assert await names(reg.entries_of_type("t")) == ["b"]
    before = log.length
    async with reg.transaction() as tx:
        await tx.put(Entry("b", KEY_B, "t"))  # identical: the flush appends nothing
    assert log.length == before


async def test_failed_transaction_writes_nothing(reg: Registry, bee: Bee) -> None:
    version = bee.version
    with pytest.raises(RuntimeError):
        async with reg.transaction() as tx:
            await tx.put(Entry("a", KEY_A, "t"))
            raise RuntimeError("boom")
    assert bee.version == version
    assert await reg.get("a") is None


async def test_invalid_input_is_refused_before_writing(reg: Registry, bee: Bee) -> None:
    with pytest.raises(ValidationError) as info:
        await reg.put({"name": "x", "drive_key": b"short", "type": "t"})
    assert info.value.field == "drive_key"
    with pytest.raises(ValidationError) as info:
        await reg.put({"name": "x", "drive_key": KEY_A, "type": "t", "color": "red"})
    assert info.value.field == "color"
    with pytest.raises(ValidationError):
        await reg.get("")
    with pytest.raises(ValidationError) as info:
        await reg.get_by_drive_key("not a key")
    assert info.value.field == "drive_key"
    assert bee.version == 0


async def test_snapshot_registry_reads_the_past_and_refuses_writes(reg: Registry) -> None:
    await reg.put(Entry("a", KEY_A, "t"))
    past = reg.at(reg.version)
    await reg.put(Entry("b", KEY_B, "t"))
    assert await names(past.entries_of_type("t")) == ["a"]
    assert await names(reg.entries_of_type("t")) == ["a", "b"]
    with pytest.raises(NotWritableError):
        await past.put(Entry("c", KEY_A, "t"))


async def test_corrupt_index_or_record_is_a_typed_error(reg: Registry, bee: Bee) -> None:
    await reg.put(Entry("a", KEY_A, "t"))
    await bee.put(encode_tuple((3, "t", "ghost")), b"")  # index key without a record
    with pytest.raises(DecodeError):
        await collect(reg.entries_of_type("t"))
    await bee.put(encode_tuple((1, "a")), b"\xff\x00garbage")
    with pytest.raises(DecodeError):
        await reg.get("a")


# --- schema v1 data read and upgraded by v2 code --------------------------------------------


async def write_as_v1(bee: Bee, entries: list[Entry], *, meta: bool) -> None:
    """What a version-1 node wrote: v1 records, drive-key and type index keys, no owner."""
    v1 = load_spec().version(1)
    batch = bee.batch()
    for e in entries:
        assert e.owner is None
        batch.put(encode_tuple((1, e.name)), encode_record(v1, "entry", e.to_dict()))
        batch.put(encode_tuple((2, e.drive_key, e.name)), b"")
        batch.put(encode_tuple((3, e.type, e.name)), b"")
    if meta:
        batch.put(encode_tuple((0, "schema")), encoding.encode(1))
    await batch.flush()


@pytest.mark.parametrize("meta", [True, False])
async def test_v1_data_reads_after_upgrade(bee: Bee, meta: bool) -> None:
    e1 = Entry("e1", KEY_A, "type1", "first")
    e2 = Entry("e2", KEY_B, "type1")
    e3 = Entry("e3", KEY_F, "type2")
    await write_as_v1(bee, [e1, e2, e3], meta=meta)
    raw = await bee.get(encode_tuple((1, "e1")))
    assert raw is not None and encoding.decode(raw)["v"] == 1
    reg = Registry(bee)
    assert await reg.schema_version() == 1
    # read-only use of v1 data: every lookup works, owner comes back as None
    assert await reg.get("e1") == e1
    assert await reg.get_by_drive_key(KEY_B) == e2
    assert await collect(reg.entries_of_type("type1")) == [e1, e2]
    assert await collect(reg.entries_of_owner(None)) == [e1, e2, e3]
    assert await collect(reg.entries_of_owner("John")) == []
    # the first v2 write migrates: no-owner index keys appear, the version is recorded
    e4 = Entry("e4", KEY_A, "type2", owner="John")
    await reg.put(e4)
    assert await reg.schema_version() == 2
    no_owner = [k async for k, _ in bee.range(gte=encode_tuple((4, NO_OWNER)))]
    assert no_owner[:3] == [encode_tuple((4, NO_OWNER, n)) for n in ("e1", "e2", "e3")]
    assert await collect(reg.entries_of_owner(None)) == [e1, e2, e3]
    assert await collect(reg.entries_of_owner("John")) == [e4]
    # upserting a v1 record gives it an owner: it moves out of the no-owner key space
    await reg.put(Entry("e2", KEY_B, "type1", owner="Ann"))
    assert await names(reg.entries_of_owner(None)) == ["e1", "e3"]
    assert await names(reg.entries_of_owner("Ann")) == ["e2"]
    # re-putting a v1 record's identical content writes nothing
    version = bee.version
    assert await reg.put(e1) is False
    assert bee.version == version


async def test_a_newer_schema_version_in_the_view_is_refused(bee: Bee) -> None:
    await bee.put(encode_tuple((1, "x")), encoding.encode({"v": 9, "name": "x"}))
    with pytest.raises(DecodeError, match="upgrade"):
        await Registry(bee).get("x")


async def test_a_v1_layout_behaves_like_v1_code(bee: Bee) -> None:
    reg = Registry(bee, spec_at(load_spec(), 1))
    assert reg.layout.by_owner is None
    await reg.put(Entry("e1", KEY_A, "t"))
    with pytest.raises(ValidationError) as info:
        await reg.put(Entry("e2", KEY_B, "t", owner="John"))
    assert info.value.field == "owner"
    assert await reg.get("e2") is None
    with pytest.raises(SchemaError):
        await collect(reg.entries_of_owner(None))
    keys = [k async for k, _ in bee.range()]
    assert len(keys) == 1 + 1 + 2  # meta, record, drive-key and type index keys
    raw = await bee.get(encode_tuple((1, "e1")))
    assert raw is not None and encoding.decode(raw)["v"] == 1
    # the same data under the v2 code
    v2 = Registry(bee)
    assert await collect(v2.entries_of_owner(None)) == [Entry("e1", KEY_A, "t")]


def test_spec_at_refuses_undeclared_versions() -> None:
    with pytest.raises(SchemaError):
        spec_at(load_spec(), 3)
    assert [op.name for op in spec_at(load_spec(), 1).ops] == [
        "add-writer", "remove-writer", "put-entry", "delete-entry"
    ]


def test_layout_keys_are_the_documented_tuples() -> None:
    layout = Layout(load_spec())
    for e in [Entry("e\x00", KEY_A, "t\u20ac", owner="o"), Entry("e1", bytes(32), "t")]:
        assert layout.primary(e.name) == encode_tuple((1, e.name))
        owner: int | str = NO_OWNER if e.owner is None else e.owner
        assert layout.index_keys(e) == [
            encode_tuple((2, e.drive_key, e.name)),
            encode_tuple((3, e.type, e.name)),
            encode_tuple((4, owner, e.name)),
        ]
        assert layout.encode_parsed(e) == layout.encode(e)
    v1 = Layout(spec_at(load_spec(), 1))
    assert len(v1.index_keys(Entry("e1", KEY_A, "t"))) == 2


async def test_upsert_of_one_field_keeps_the_other_index_keys(reg: Registry, bee: Bee) -> None:
    await reg.put(Entry("e1", KEY_A, "t1", owner="John"))
    await reg.put(Entry("e2", KEY_A, "t1"))
    await reg.put(Entry("e1", KEY_A, "t2", owner="John"))  # only the type changes
    assert [k async for k, _ in bee.range()] == sorted([
        encode_tuple((0, "schema")),
        encode_tuple((1, "e1")),
        encode_tuple((1, "e2")),
        encode_tuple((2, KEY_A, "e1")),
        encode_tuple((2, KEY_A, "e2")),
        encode_tuple((3, "t1", "e2")),
        encode_tuple((3, "t2", "e1")),
        encode_tuple((4, "John", "e1")),
        encode_tuple((4, NO_OWNER, "e2")),
    ])
    await reg.put(Entry("e1", KEY_A, "t2", "described", "John"))  # no index key changes
    assert await reg.get_by_drive_key(KEY_A) == Entry("e1", KEY_A, "t2", "described", "John")
    assert await names(reg.entries_of_owner("John")) == ["e1"]
    assert await names(reg.entries_of_owner(None)) == ["e2"]
    assert await names(reg.entries_of_type("t2")) == ["e1"]
    assert (await reg.get("e1")) == Entry("e1", KEY_A, "t2", "described", "John")


@given(
    st.builds(
        Entry,
        name=st.text(alphabet="a\x00\u20ac", min_size=1, max_size=5),
        drive_key=st.binary(min_size=32, max_size=32),
        type=st.text(alphabet="b\U0001f600", min_size=1, max_size=5),
        description=st.none() | st.text(max_size=5),
        owner=st.none() | st.text(max_size=5),
    )
)
def test_the_record_fast_path_writes_the_canonical_record(e: Entry) -> None:
    spec = load_spec()
    layout = Layout(spec)
    assert layout.encode_parsed(e) == layout.encode(e) == encode_record(
        spec.latest, "entry", e.to_dict()
    )
    assert layout.decode(layout.encode_parsed(e)) == e
    v1_entry = Entry(e.name, e.drive_key, e.type, e.description)
    v1 = Layout(spec_at(spec, 1))
    assert v1.encode_parsed(v1_entry) == encode_record(spec.version(1), "entry",
                                                       v1_entry.to_dict())
    assert encoding.decode(v1.encode_parsed(v1_entry))["v"] == 1


def test_canonical_order_is_the_encoders_map_order() -> None:
    assert canonical_order(["req", "op", "v", "description", "name", "type"]) == (
        "v", "op", "req", "name", "type", "description"
    )
    data = {k: 1 for k in canonical_order(["owner", "drive_key", "v", "name", "ab", "b"])}
    assert dumps_ordered(data) == encoding.encode(data)
