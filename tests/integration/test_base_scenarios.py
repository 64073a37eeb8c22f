"""Autobase scenarios in one process, over real SQLite stores, synced by real proofs.

Names follow Autobase's own suite. ``converge`` syncs every connected store pairwise and
updates each base until nothing changes; partitions are made by converging subsets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from autobase_py.base.core import Autobase
from autobase_py.base.oplog import OplogBlock, encode_block
from autobase_py.bee import Bee
from autobase_py.errors import ApplyError, NotWritableError
from autobase_py.testing import kv
from autobase_py.testing.cluster import Cluster as NodeCluster
from autobase_py.testing.sync import converge, sync, sync_stores

Base = Autobase[Bee]


open_kv_base = kv.open_base
indexers = kv.indexers


Cluster = NodeCluster[Base]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, open_kv_base)
    yield c
    await c.close()


def view_hash(base: Base, length: int | None = None) -> bytes:
    return base.view_log.tree_hash(length)


async def assert_same_view(bases: list[Base]) -> None:
    hashes = {view_hash(b) for b in bases}
    assert len(hashes) == 1, "views differ"
    journals = [await kv.journal(b.view) for b in bases]
    assert all(j == journals[0] for j in journals)


async def fresh_replay(cluster: Cluster, bases: list[Base]) -> bytes:
    """The view tree hash of a new peer that applies the final order from scratch."""
    fresh = await cluster.open(f"fresh{len(cluster.nodes)}", bases[0].key)
    await converge([*bases, fresh])
    assert fresh.applied_length == bases[0].applied_length
    return view_hash(fresh)


async def test_single_writer(cluster: Cluster) -> None:
    (a,) = await indexers(cluster, 1)
    for i in range(5):
        await a.append(kv.put(b"k%d" % i, b"v%d" % i))
    assert await kv.get(a.view, b"k3") == b"v3"
    assert a.confirmed_length == a.applied_length == 5
    assert a.signed_length == 5  # one indexer: its own signature is a majority
    assert a.certificate is not None


async def test_two_writers(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    await a.append(kv.put(b"x", b"from a"))
    await b.append(kv.put(b"y", b"from b"))
    await converge([a, b])
    assert await kv.get(b.view, b"x") == b"from a"
    assert await kv.get(a.view, b"y") == b"from b"
    await assert_same_view([a, b])
    assert a.unconfirmed_values == b.unconfirmed_values == 0


async def test_add_writer_and_wait_for_writable(cluster: Cluster) -> None:
    a = await cluster.open("a")
    b = await cluster.open("b", a.key)
    assert not b.writable
    with pytest.raises(NotWritableError):
        await b.append(kv.put(b"x", b"1"))
    events = b.events()
    await a.append(kv.add_writer(b.local_key, indexer=False))
    await sync(a, b)
    assert b.writable and not b.is_indexer
    kinds = []
    async for event in events:
        kinds.append(event.kind)
        if event.kind == "writable":
            break
    assert "writable" in kinds
    await b.append(kv.put(b"x", b"1"))
    await converge([a, b])
    assert await kv.get(a.view, b"x") == b"1"


async def test_no_truncation_when_history_is_linear(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    forks = b.view_log.fork
    for i in range(3):
        await a.append(kv.put(b"a%d" % i, b""))
        await converge([a, b])
        await b.append(kv.put(b"b%d" % i, b""))
        await converge([a, b])
    assert b.view_log.fork == forks and a.view_log.fork == forks
    await assert_same_view([a, b])


async def test_truncation_when_history_is_not_linear_and_result_equals_replay(
    cluster: Cluster,
) -> None:
    a, b, c = await indexers(cluster, 3)
    # b and c write concurrently, unaware of each other; a hears c first, then b
    await b.append([kv.put(b"k", b"b1"), kv.put(b"k2", b"b2")])
    await c.append(kv.put(b"k", b"c1"))
    await sync(a, c)
    before = a.view_log.fork
    await converge([a, b, c])
    await assert_same_view([a, b, c])
    assert view_hash(a) == await fresh_replay(cluster, [a, b, c])
    # whichever order won, some peer had applied the other order first and truncated
    assert any(x.view_log.fork > 0 for x in (a, b, c)) or a.view_log.fork > before


async def test_online_majority_and_availability_promise(cluster: Cluster) -> None:
    a, b, c = await indexers(cluster, 3)
    # one down (c): writes still confirm
    await a.append(kv.put(b"one-down", b"1"))
    await converge([a, b])
    assert a.unconfirmed_values == 0 and b.unconfirmed_values == 0
    signed = a.signed_length
    # two down (b, c): writes accepted and visible locally, not confirmed, no certificate
    await a.append(kv.put(b"two-down", b"2"))
    await converge([a])
    assert await kv.get(a.view, b"two-down") == b"2"
    assert a.unconfirmed_values == 1
    assert a.signed_length == signed
    # they return: everything confirms and views converge
    await converge([a, b, c])
    for x in (a, b, c):
        assert x.unconfirmed_values == 0
        assert await kv.get(x.view, b"two-down") == b"2"
    await assert_same_view([a, b, c])
    assert a.signed_length > signed


async def test_online_minorities_confirm_nothing(cluster: Cluster) -> None:
    bases = await indexers(cluster, 5)
    a, b, c, d, _e = bases
    confirmed = [x.confirmed_length for x in bases]
    await a.append(kv.put(b"x", b"a"))
    await c.append(kv.put(b"y", b"c"))
    await converge([a, b])
    await converge([c, d])
    assert [x.confirmed_length for x in bases] == confirmed
    await converge(bases)
    assert all(x.unconfirmed_values == 0 for x in bases)
    await assert_same_view(bases)


async def test_rotating_majority(cluster: Cluster) -> None:
    a, b, c = await indexers(cluster, 3)
    groups = [[a, b], [b, c], [c, a]]
    for i, group in enumerate(groups * 2):
        await group[0].append(kv.put(b"r%d" % i, b"%d" % i))
        await converge(group)
        assert group[0].unconfirmed_values == 0
    await converge([a, b, c])
    await assert_same_view([a, b, c])


async def test_undo_a_batch(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    await a.append([kv.put(b"p%d" % i, b"a") for i in range(4)])
    await b.append([kv.put(b"p%d" % i, b"b") for i in range(3)])
    await converge([a, b])
    await assert_same_view([a, b])
    journal = await kv.journal(a.view)
    # batches are never split: each writer's batch is contiguous in the applied order
    from autobase_py import encoding

    writers = [encoding.decode(v)[2] for v in journal if encoding.decode(v)[0] == "put"]
    runs = [w for i, w in enumerate(writers) if i == 0 or writers[i - 1] != w]
    assert sorted(runs) == [b"a", b"b"]
    assert view_hash(a) == await fresh_replay(cluster, [a, b])


async def test_sequential_restarts(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    for i in range(3):
        await a.append(kv.put(b"s%d" % i, b"%d" % i))
        await converge([a, b])
        a = await cluster.restart("a")
        b = await cluster.restart("b")
        assert await kv.get(a.view, b"s%d" % i) == b"%d" % i
    await converge([a, b])
    await assert_same_view([a, b])
    assert a.unconfirmed_values == 0


async def test_restart_with_unconfirmed_nodes(cluster: Cluster) -> None:
    a, b, c = await indexers(cluster, 3)
    await a.append(kv.put(b"u", b"1"))
    await converge([a])  # alone: not confirmed
    assert a.unconfirmed_values == 1
    applied = a.applied_length
    a = await cluster.restart("a")
    assert a.applied_length == applied and a.unconfirmed_values == 1
    assert await kv.get(a.view, b"u") == b"1"
    await converge([a, b, c])
    assert a.unconfirmed_values == 0
    await assert_same_view([a, b, c])


async def test_non_indexed_writer(cluster: Cluster) -> None:
    a, b, c = await indexers(cluster, 3)
    w = await cluster.open("w", a.key)
    await a.append(kv.add_writer(w.local_key, indexer=False))
    await converge([a, b, c, w])
    assert w.writable and not w.is_indexer
    await w.append(kv.put(b"from-w", b"1"))
    await converge([a, b, c, w])
    assert w.unconfirmed_values == 0
    await assert_same_view([a, b, c, w])


async def test_remove_writer_and_rejoin(cluster: Cluster) -> None:
    a = await cluster.open("a")
    b = await cluster.open("b", a.key)
    await a.append(kv.add_writer(b.local_key, indexer=False))
    await converge([a, b])
    await a.append(kv.remove_writer(b.local_key))
    await converge([a, b])
    assert not b.writable
    with pytest.raises(NotWritableError):
        await b.append(kv.put(b"x", b"1"))
    await a.append(kv.add_writer(b.local_key, indexer=False))
    await converge([a, b])
    assert b.writable
    await b.append(kv.put(b"x", b"back"))
    await converge([a, b])
    assert await kv.get(a.view, b"x") == b"back"


async def test_remove_indexer_and_keep_confirming(cluster: Cluster) -> None:
    a, b, c = await indexers(cluster, 3)
    await a.append(kv.remove_writer(c.local_key))
    await converge([a, b])
    assert len(a.indexers) == 2 and c.local_key not in a.indexers
    await a.append(kv.put(b"after", b"1"))
    await converge([a, b])
    assert a.unconfirmed_values == 0


async def test_cannot_remove_the_last_indexer(cluster: Cluster) -> None:
    (a,) = await indexers(cluster, 1)
    events = a.events()
    await a.append(kv.remove_writer(a.local_key))
    assert a.is_indexer and a.writable
    async for event in events:
        if event.kind == "error":
            assert "last indexer" in event.detail["reason"]
            break
    await a.append(kv.put(b"still", b"works"))
    assert a.unconfirmed_values == 0


async def test_promote_and_demote(cluster: Cluster) -> None:
    a = await cluster.open("a")
    b = await cluster.open("b", a.key)
    await a.append(kv.add_writer(b.local_key, indexer=False))
    await converge([a, b])
    assert b.writable and not b.is_indexer
    await a.append(kv.add_writer(b.local_key, indexer=True))
    await converge([a, b])
    assert b.is_indexer and len(a.indexers) == 2
    await b.append(kv.add_writer(b.local_key, indexer=False))
    await converge([a, b])
    assert not b.is_indexer and b.writable and a.indexers == [a.local_key]


async def test_indexer_removes_itself(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    await b.append(kv.remove_writer(b.local_key))
    await converge([a, b])
    assert not b.writable and a.indexers == [a.local_key]
    await a.append(kv.put(b"solo", b"1"))
    assert a.unconfirmed_values == 0


async def test_rotate_an_indexers_key_in_one_apply(cluster: Cluster) -> None:
    a, b, c = await indexers(cluster, 3)
    d = await cluster.open("d", a.key)
    await a.append([kv.remove_writer(c.local_key), kv.add_writer(d.local_key)])
    await converge([a, b, d])
    assert d.is_indexer and sorted(a.indexers) == sorted([a.local_key, b.local_key, d.local_key])
    view_key = a.key
    await d.append(kv.put(b"from-d", b"1"))
    await converge([a, b, d])
    assert d.unconfirmed_values == 0 and a.key == view_key


async def test_interrupt_stops_without_half_applying(cluster: Cluster) -> None:
    (a,) = await indexers(cluster, 1)
    await a.append(kv.put(b"before", b"1"))
    length = a.local_log.length
    with pytest.raises(ApplyError, match="maintenance"):
        await a.append([kv.put(b"half", b"x"), kv.interrupt("maintenance")])
    assert any(e.kind == "interrupted" for e in a.recent_events)
    with pytest.raises(ApplyError):
        await a.update()
    a = await cluster.restart("a")
    assert a.local_log.length == length  # the interrupted batch was never stored
    assert await kv.get(a.view, b"half") is None
    assert await kv.get(a.view, b"before") == b"1"


async def test_apply_raises_on_a_remote_value(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    # b's own software refuses such a value (apply fails locally and nothing is stored) ...
    with pytest.raises(ApplyError, match="boom"):
        await b.append(kv.fail("boom"))
    assert b.failed is not None
    # ... so a writer running different software writes it straight into its oplog
    b.local_log.append([encode_block(OplogBlock(heads=(), value=kv.fail("boom")))])
    with pytest.raises(ApplyError, match="boom"):
        await sync(a, b)
    assert a.failed is not None and "KVError" in a.failed
    assert any(e.kind == "error" for e in a.recent_events)


async def test_undecodable_block_is_reported_and_the_rest_keeps_working(
    cluster: Cluster,
) -> None:
    a, b, c = await indexers(cluster, 3)
    c.local_log.append([b"\xffnot an oplog block"])  # c's software is broken
    await converge([a, b, c])
    assert c.local_key in a.bad_writers and "block" in a.bad_writers[c.local_key]
    assert any(e.kind == "error" and "index" in e.detail for e in a.recent_events)
    await a.append(kv.put(b"still", b"fine"))
    await converge([a, b])
    assert a.unconfirmed_values == 0
    assert a.status()["bad_writers"]


async def test_block_naming_itself_as_a_head_is_reported_not_waited_for(
    cluster: Cluster,
) -> None:
    a, b, c = await indexers(cluster, 3)
    # decodes fine, but its head on its own log is the block itself: it can never be added
    own_next = c.local_log.length + 1
    c.local_log.append(
        [encode_block(OplogBlock(heads=((c.local_key, own_next),), value=kv.put(b"x", b"1")))]
    )
    await converge([a, b, c])
    assert "its own writer" in a.bad_writers[c.local_key]
    assert await kv.get(a.view, b"x") is None
    await a.append(kv.put(b"still", b"fine"))
    await converge([a, b])
    assert a.unconfirmed_values == 0


async def test_a_re_added_writers_stored_blocks_are_taken_in_by_the_same_cycle(
    cluster: Cluster,
) -> None:
    a = await cluster.open("a")
    c = await cluster.open("c", a.key)
    await a.append(kv.add_writer(c.local_key, indexer=False))
    await converge([a, c])
    await a.append(kv.remove_writer(c.local_key))
    await c.append(kv.put(b"late", b"1"))  # c has not seen its removal yet
    sync_stores(a.store, c.store)
    await a.update()
    assert await kv.get(a.view, b"late") is None  # not a writer any more: skipped
    # re-adding c: its block is already stored here, and no other change will arrive to
    # trigger another cycle, so the re-adding append itself must take it in
    await a.append(kv.add_writer(c.local_key, indexer=False))
    assert await kv.get(a.view, b"late") == b"1"


async def test_state_records_under_their_old_keys_are_moved_on_open(cluster: Cluster) -> None:
    from autobase_py.base.core import _LEGACY_RECORDS

    (a,) = await indexers(cluster, 1)
    await a.append(kv.put(b"k", b"v"))
    applied, signed = a.applied_length, a.signed_length
    assert signed > 0
    storage = a.storage
    with storage.transaction():  # as a base written before the keys moved left them
        for old, new in _LEGACY_RECORDS:
            value = storage.get(new)
            assert value is not None
            storage.put(old, value)
            storage.delete(new)
    a = await cluster.restart("a")
    assert (a.applied_length, a.signed_length) == (applied, signed)
    assert all(a.storage.get(old) is None for old, _ in _LEGACY_RECORDS)
    await a.append(kv.put(b"k2", b"v2"))
    assert await kv.get(a.view, b"k") == b"v" and a.unconfirmed_values == 0


async def test_certificate_verifies_from_the_registry_key_after_two_rotations(
    cluster: Cluster,
) -> None:
    from autobase_py.base.checkpoint import verify_chain

    a, b, c = await indexers(cluster, 3)
    d = await cluster.open("d", a.key)
    e = await cluster.open("e", a.key)
    await a.append([kv.remove_writer(c.local_key), kv.add_writer(d.local_key)])
    await converge([a, b, d])
    await a.append([kv.remove_writer(b.local_key), kv.add_writer(e.local_key)])
    await converge([a, d, e])
    await e.append(kv.put(b"latest", b"1"))
    await converge([a, d, e])
    cert = e.certificate
    assert cert is not None and e.signed_length > 0
    assert len(e.chain) >= 3  # b+c added, c->d, b->e
    verify_chain(e.key, e.chain, cert)
    assert cert.membership.indexers == tuple(sorted([a.local_key, d.local_key, e.local_key]))


ScenarioFn = Callable[[Cluster], Any]


async def test_deferred_acks_let_values_vote_and_still_confirm(cluster: Cluster) -> None:
    """Indexers that keep writing need few acks: a due ack waits one cycle and is dropped when
    the indexer's own value votes first; eager acking (the old policy) acks every time."""

    async def run(eager: bool, prefix: str) -> tuple[int, int]:
        bases = [cluster.nodes[n] for n in ("a", "b", "c")]
        for b in bases:
            b.eager_acks = eager
        before = [b.local_log.length for b in bases]
        for i in range(10):
            for b in bases:
                await b.append(kv.put(f"{prefix}{i}".encode(), b"v"))
            await sync(*bases)
        await converge(bases)
        assert all(b.unconfirmed_values == 0 for b in bases)
        nodes = sum(b.local_log.length - n for b, n in zip(bases, before, strict=True))
        return nodes - 30, nodes  # acks (and checkpoint acks), all nodes

    await indexers(cluster, 3)
    eager_acks, _ = await run(True, "e")
    deferred_acks, _ = await run(False, "d")
    assert deferred_acks < eager_acks


async def test_flush_confirms_under_deferred_acks(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    await b.append(kv.put(b"x", b"1"))
    await sync(a, b)
    assert a.unconfirmed_values == 1
    # b's value waits for a's vote; a only marked its ack as due
    await sync(a, b, update=False)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.flush)
            nursery.start_soon(b.flush)
            for _ in range(20):
                await trio.lowlevel.checkpoint()
                sync_stores(a.store, b.store)
                a.wakeup()
                b.wakeup()
    assert a.unconfirmed_values == 0 and b.unconfirmed_values == 0


async def test_cancelling_a_caller_never_breaks_the_base(cluster: Cluster) -> None:
    """A timeout around append/update lands after the cycle, not inside it."""
    (a,) = await indexers(cluster, 1)
    scope = trio.CancelScope()

    async def apply_cancelled_midway(nodes: list[Any], view: Bee, host: Any) -> None:
        scope.cancel()  # the caller's timeout fires while apply runs ...
        await trio.lowlevel.checkpoint()  # ... and apply reaches a cancellation point
        await kv.apply(nodes, view, host)

    a._apply_fn = apply_cancelled_midway
    with scope:
        await a.append(kv.put(b"k", b"v"))
    assert a.failed is None
    assert await kv.get(a.view, b"k") == b"v"  # the cycle completed and committed
    a._apply_fn = kv.apply
    await a.append(kv.put(b"k2", b"v2"))
    assert a.unconfirmed_values == 0
