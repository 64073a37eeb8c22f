"""The registry service in one process: the Autobase workshop tests, ported, plus the op
router's apply-time rules (skips are identical everywhere, unknown ops interrupt, admin ops
only from indexers). Stores are real SQLite folders synced by real proofs
(``autobase_py.testing.sync``); partitions are made by converging subsets."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from autobase_py import encoding
from autobase_py.errors import ApplyError, InvalidKeyError, MembershipError, NotWritableError
from autobase_py.store import Store
from autobase_py.testing.cluster import Cluster as NodeCluster
from autobase_py.testing.sync import converge, sync
from registry import Entry, SchemaError, ValidationError
from registry.ops import Skipped
from registry.schema import SPEC_PATH, load_spec, parse_spec, spec_at
from registry.service import OpContext, RegistryService

KEY_A = bytes([0xAA]) * 32
KEY_B = bytes([0xBB]) * 32


async def open_service(
    store: Store, bootstrap: bytes | None = None, **options: Any
) -> RegistryService:
    return await RegistryService.open(store, bootstrap, **options)


Cluster = NodeCluster[RegistryService]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, open_service)
    yield c
    await c.close()


async def settle(*nodes: RegistryService) -> None:
    await converge([n.base for n in nodes])


async def indexers(cluster: Cluster, n: int) -> list[RegistryService]:
    a = await cluster.open("a")
    others = [await cluster.open(chr(ord("a") + i), a.key) for i in range(1, n)]
    for o in others:
        await a.add_writer(o.local_key)
    nodes = [a, *others]
    await settle(*nodes)
    for x in nodes:
        assert x.base.is_indexer and len(x.base.indexers) == n
    return nodes


def view_hash(svc: RegistryService) -> bytes:
    return svc.base.view_log.tree_hash()


async def names_of_type(svc: RegistryService, type_: str) -> list[str]:
    return [e.name async for e in svc.view.entries_of_type(type_)]


# --- the Autobase workshop tests ------------------------------------------------------------


async def test_can_add_an_additional_indexer(cluster: Cluster) -> None:
    a = await cluster.open("a")
    b = await cluster.open("b", a.key)
    assert not b.base.writable and not b.base.is_indexer
    await a.add_writer(b.local_key)
    await settle(a, b)
    assert len(a.base.indexers) == 2 and len(b.base.indexers) == 2
    assert b.base.is_indexer and b.base.writable
    assert "is-indexer" in [e.kind for e in b.base.recent_events]


async def test_a_put_on_one_node_is_visible_on_another(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    entry = Entry("e1", KEY_A, "type1", "desc", "John")
    await a.put_entry(entry)
    assert await a.view.get("e1") == entry  # local view right after append
    await settle(a, b)
    assert await b.view.get("e1") == entry
    assert await b.view.get_by_drive_key(KEY_A) == entry
    async with b.reading() as view:  # the same view, read between two cycles
        assert view is b.view and await view.get("e1") == entry
    await b.put_entry({"name": "e2", "drive_key": KEY_B.hex(), "type": "type1"})
    await settle(a, b)
    assert await names_of_type(a, "type1") == ["e1", "e2"]
    assert view_hash(a) == view_hash(b)


async def test_three_indexers_happy_path(cluster: Cluster) -> None:
    a = await cluster.open("a")
    key = a.key
    b = await cluster.open("b", key)
    c = await cluster.open("c", key)
    view_keys = [x.base.view_log.key for x in (a, b, c)]
    await a.add_writer(b.local_key)
    await settle(a, b, c)
    await b.add_writer(c.local_key)  # the new indexer can add the next one
    await settle(a, b, c)
    for x in (a, b, c):
        assert x.key == key and len(x.base.indexers) == 3 and x.base.is_indexer
    for i, x in enumerate((a, b, c)):
        await x.put_entry(Entry(f"e{i}", KEY_A, "t", owner=f"o{i}"))
    await settle(a, b, c)
    for x in (a, b, c):
        assert x.key == key  # the registry key is stable across indexer changes
        assert await names_of_type(x, "t") == ["e0", "e1", "e2"]
        assert x.base.unconfirmed_values == 0
        assert [e.name async for e in x.confirmed_view().entries_of_type("t")] == [
            "e0",
            "e1",
            "e2",
        ]
    assert view_hash(a) == view_hash(b) == view_hash(c)
    assert [x.base.view_log.key for x in (a, b, c)] == view_keys  # no view is ever re-keyed


async def test_one_indexer_online_accepts_but_does_not_confirm(cluster: Cluster) -> None:
    a, b, c = await indexers(cluster, 3)
    # one down (c): still confirmed
    await a.put_entry(Entry("one-down", KEY_A, "t"))
    await settle(a, b)
    assert a.base.unconfirmed_values == 0
    assert await a.confirmed_view().get("one-down") is not None
    # two down (b, c): visible locally, not confirmed
    await a.put_entry(Entry("two-down", KEY_B, "t"))
    await settle(a)
    assert await a.view.get("two-down") == Entry("two-down", KEY_B, "t")
    assert a.base.unconfirmed_values == 1
    assert await a.confirmed_view().get("two-down") is None
    # a second indexer comes back: it confirms
    await settle(a, b)
    assert a.base.unconfirmed_values == 0
    assert await a.confirmed_view().get("two-down") is not None
    assert await a.signed_view().get("two-down") is not None
    assert await b.confirmed_view().get("two-down") is not None
    await settle(a, b, c)
    assert await c.view.get("two-down") is not None
    assert view_hash(a) == view_hash(b) == view_hash(c)


# --- local validation: nothing invalid is appended ------------------------------------------


async def test_invalid_writes_are_refused_before_appending(cluster: Cluster) -> None:
    (a,) = await indexers(cluster, 1)
    length = a.base.local_log.length
    with pytest.raises(ValidationError) as info:
        await a.put_entry({"name": "x", "drive_key": b"short", "type": "t"})
    assert info.value.field == "drive_key"
    with pytest.raises(ValidationError):
        await a.put_entries([Entry("ok", KEY_A, "t"), {"name": "", "drive_key": KEY_A}])
    with pytest.raises(ValidationError):
        await a.delete_entry("")
    with pytest.raises(InvalidKeyError):
        await a.add_writer("not a key")
    with pytest.raises(MembershipError, match="last indexer"):
        await a.remove_writer(a.local_key)
    assert a.base.local_log.length == length
    assert await a.view.get("ok") is None


async def test_non_writer_cannot_write(cluster: Cluster) -> None:
    a = await cluster.open("a")
    b = await cluster.open("b", a.key)
    with pytest.raises(NotWritableError):
        await b.put_entry(Entry("x", KEY_A, "t"))


async def test_delete_and_batches(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    await a.put_entries([Entry(f"m{i}", KEY_A, "t", owner="o") for i in range(5)])
    await settle(a, b)  # the delete must causally follow the puts
    await b.delete_entry("m2")
    await b.delete_entry("never-there")
    await settle(a, b)
    for x in (a, b):
        assert [e.name async for e in x.view.entries_of_owner("o")] == ["m0", "m1", "m3", "m4"]
    assert view_hash(a) == view_hash(b)


async def test_remove_and_rotate_an_indexer(cluster: Cluster) -> None:
    a, b, c = await indexers(cluster, 3)
    d = await cluster.open("d", a.key)
    await a.remove_writer(c.local_key)
    await settle(a, b)
    await a.add_writer(d.local_key)
    await settle(a, b, d)
    assert sorted(a.base.indexers) == sorted([a.local_key, b.local_key, d.local_key])
    await d.put_entry(Entry("from-d", KEY_A, "t"))
    await settle(a, b, d)
    assert d.base.unconfirmed_values == 0
    assert await a.confirmed_view().get("from-d") is not None


async def test_restart_keeps_the_view(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    await a.put_entry(Entry("kept", KEY_A, "t", owner="o"))
    await settle(a, b)
    a = await cluster.restart("a")
    assert await a.view.get("kept") == Entry("kept", KEY_A, "t", owner="o")
    await a.put_entry(Entry("after", KEY_B, "t"))
    await settle(a, b)
    assert await names_of_type(b, "t") == ["after", "kept"]


# --- apply-time rules -----------------------------------------------------------------------


async def test_malformed_ops_are_skipped_identically_on_every_peer(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await indexers(cluster, 2)
    bad_request = encoding.encode({"op": 2, "req": {"entry": {"name": "x", "type": "t"}}})
    bad_envelope = encoding.encode({"op": 2})
    long_delete = encoding.encode({"op": 3, "req": {"name": "x" * 5000}})
    empty_delete = encoding.encode({"op": 3, "req": {"name": ""}})
    # bypass the service's validation, as a buggy or hostile writer would
    with caplog.at_level(logging.WARNING, logger="registry.service"):
        await a.base.append([b"\xff not cbor", bad_request, bad_envelope])
        await b.base.append([long_delete, empty_delete])
        await a.put_entry(Entry("good", KEY_A, "t"))
        await settle(a, b)
    for x in (a, b):
        assert not x.base.failed
        assert await names_of_type(x, "t") == ["good"]
        reasons = [s.reason for s in x.recent_skips]
        assert len(reasons) >= 5
        assert any("drive_key" in r for r in reasons)
        assert any("longer than" in r for r in reasons)
        assert any("envelope" in r for r in reasons)
    assert view_hash(a) == view_hash(b)
    assert a.base.unconfirmed_values == b.base.unconfirmed_values == 0
    assert any("skipped op" in r.getMessage() for r in caplog.records)


async def test_admin_ops_from_a_non_indexer_are_skipped(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    w = await cluster.open("w", a.key)
    x = await cluster.open("x", a.key)
    await a.add_writer(w.local_key, indexer=False)
    await settle(a, b, w, x)
    assert w.base.writable and not w.base.is_indexer
    with pytest.raises(MembershipError):
        await w.add_writer(x.local_key)  # refused locally ...
    codec = w.codec
    await w.base.append(codec.encode("add-writer", {"key": x.local_key, "indexer": True}))
    await w.base.append(codec.encode("remove-writer", {"key": b.local_key}))
    await settle(a, b, w, x)
    for node in (a, b, w):  # ... and skipped by every peer when forced in
        assert not node.base.membership.is_writer(x.local_key)
        assert node.base.membership.is_indexer(b.local_key)
        assert any("not an indexer" in s.reason for s in node.recent_skips)
    assert not x.base.writable
    assert view_hash(a) == view_hash(b) == view_hash(w)


def newer_spec() -> Any:
    raw = json.loads(SPEC_PATH.read_text())
    raw["ops"].append({"id": 4, "name": "future-op", "since": 2, "request": []})
    return parse_spec(raw)


async def _future_op(req: Mapping[str, Any], ctx: OpContext) -> Skipped | None:
    return None


async def test_unknown_op_interrupts(cluster: Cluster) -> None:
    a = await cluster.open("a")
    b = await cluster.open(
        "b", a.key, spec=newer_spec(), extra_handlers={"future-op": _future_op}
    )
    await a.add_writer(b.local_key)
    await a.put_entry(Entry("before", KEY_A, "t"))
    await settle(a, b)
    # the newer node writes an op the old one does not know
    await b.base.append(encoding.encode({"op": 4, "req": {}}))
    assert not b.base.failed
    with pytest.raises(ApplyError, match="unknown"):
        await sync(a.base, b.base)
    assert a.base.failed is not None and "op id 4" in a.base.failed
    assert any(e.kind == "interrupted" for e in a.base.recent_events)
    # nothing of the interrupted cycle was applied: the old node still serves what it had
    assert await a.view.get("before") is not None
    # the old node's own attempt at such a value is never stored either
    c = await cluster.open("c")
    length = c.base.local_log.length
    with pytest.raises(ApplyError):
        await c.base.append(encoding.encode({"op": 77, "req": {}}))
    c = await cluster.restart("c")
    assert c.base.local_log.length == length


async def test_upgrade_from_schema_v1_nodes(cluster: Cluster) -> None:
    v1 = spec_at(load_spec(), 1)
    a = await cluster.open("a", spec=v1)
    b = await cluster.open("b", a.key, spec=v1)
    c = await cluster.open("c", a.key, spec=v1)
    await a.add_writer(b.local_key)
    await a.add_writer(c.local_key)
    await settle(a, b, c)
    e1 = Entry("e1", KEY_A, "type1", "first")
    e2 = Entry("e2", KEY_B, "type1")
    await a.put_entry(e1)
    await b.put_entry(e2)
    with pytest.raises(ValidationError) as info:  # v1 code has no owner field
        await a.put_entry(Entry("x", KEY_A, "t", owner="John"))
    assert info.value.field == "owner"
    with pytest.raises(SchemaError):
        [e async for e in a.view.entries_of_owner(None)]
    await settle(a, b, c)
    assert await a.view.schema_version() == 1
    # a and b get the v2 code; c still runs v1
    a = await cluster.restart("a")
    b = await cluster.restart("b")
    for x in (a, b):  # before any v2 write: v1 data reads, owner None lists it
        assert await x.view.get("e1") == e1
        assert [e async for e in x.view.entries_of_owner(None)] == [e1, e2]
    e4 = Entry("e4", KEY_B, "type2")
    await c.put_entry(e4)  # a v1 op applied by v2 code writes exactly what v1 code writes
    await settle(a, b, c)
    assert await a.view.schema_version() == 1
    assert view_hash(a) == view_hash(b) == view_hash(c)
    # the first op written by v2 code upgrades the view at that position of the order
    e3 = Entry("e3", KEY_A, "type2", owner="John")
    await a.put_entry(e3)
    with pytest.raises(ApplyError, match="schema version 2"):
        await settle(a, b, c)  # the v1 node halts instead of diverging
    assert c.base.failed is not None
    await settle(a, b)
    for x in (a, b):
        assert await x.view.schema_version() == 2
        assert [e async for e in x.view.entries_of_owner(None)] == [e1, e2, e4]
        assert [e async for e in x.view.entries_of_owner("John")] == [e3]
        assert await x.view.get_by_drive_key(KEY_A) == e1
        assert x.base.unconfirmed_values == 0
    # c is upgraded too and catches up: all three views are byte-identical
    c = await cluster.restart("c")
    assert await c.view.get("e3") is None
    await settle(a, b, c)
    assert await c.view.get("e3") == e3
    assert view_hash(a) == view_hash(b) == view_hash(c)
    # a v2 peer replaying the whole order from scratch builds the same view, byte for byte
    d = await cluster.open("d", a.key)
    await settle(a, b, c, d)
    assert [e async for e in d.view.entries()] == [e1, e2, e3, e4]
    assert view_hash(d) == view_hash(a)


async def test_concurrent_upserts_converge_without_stale_index_keys(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    await a.put_entry(Entry("m", KEY_A, "t0", owner="o0"))
    await settle(a, b)
    # partition: both rewrite the same entry differently, and each sees only its own
    await a.put_entry(Entry("m", KEY_A, "ta", owner="oa"))
    await a.put_entry(Entry("n", KEY_A, "ta"))
    await b.put_entry(Entry("m", KEY_B, "tb", owner="ob"))
    await b.delete_entry("n")
    assert [e.name async for e in a.view.entries_of_type("ta")] == ["m", "n"]
    assert [e.name async for e in b.view.entries_of_type("tb")] == ["m"]
    await settle(a, b)  # one of them is reordered: its view is rolled back and replayed
    winner = await a.view.get("m")
    assert winner is not None and winner == await b.view.get("m")
    fresh = await cluster.open("fresh", a.key)
    await settle(a, b, fresh)
    for x in (a, b, fresh):
        assert await x.view.get("m") == winner
        types = {t: [e.name async for e in x.view.entries_of_type(t)] for t in ("t0", "ta", "tb")}
        assert sum(n == "m" for names in types.values() for n in names) == 1
        assert types[winner.type].count("m") == 1
        owners = [[e.name async for e in x.view.entries_of_owner(o)] for o in ("o0", "oa", "ob")]
        assert sum(names.count("m") for names in owners) == 1
        assert await x.view.get_by_drive_key(winner.drive_key) == winner  # "m" < "n"
        other = await x.view.get_by_drive_key(KEY_B if winner.drive_key == KEY_A else KEY_A)
        assert other is None or other.name != "m"
    assert view_hash(a) == view_hash(b) == view_hash(fresh)
