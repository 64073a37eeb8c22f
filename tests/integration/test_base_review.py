"""Review of the base's round-4 changes: scheduling and cancellation of a call (``_Turn``),
nodes added without ``check_node`` (``trusted_node``), the append cycle's ingest, the moved
state records, and the bee flush that yields only when its task did not.

Real SQLite stores (``testing.cluster``), no sleeps: interleavings are observed with a
sibling task that counts its own steps, or with events.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

from autobase_py import encoding
from autobase_py.base.core import Autobase
from autobase_py.base.ledger import CERTIFICATE_KEY
from autobase_py.base.oplog import FORMAT_VERSION, OplogBlock, decode_block, encode_block
from autobase_py.bee import Bee
from autobase_py.errors import DecodeError, InvalidNodeError
from autobase_py.linearizer.node import Node, check_node, trusted_node
from autobase_py.storage import Storage
from autobase_py.storage_trio import write_lock
from autobase_py.store import Store
from autobase_py.testing import kv
from autobase_py.testing.cluster import Cluster as NodeCluster
from autobase_py.testing.sync import converge, sync_stores

Base = Autobase[Bee]
Cluster = NodeCluster[Base]
OLD_STATE, OLD_CERTIFICATE = b"base/state", b"base/certificate"
NEW_STATE = b"base/~state"


open_kv_base = kv.open_base
indexers = kv.indexers


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, open_kv_base)
    yield c
    await c.close()


class StepCounter(trio.abc.Instrument):
    """Counts the finished steps of one task: each one ended at a yield to the scheduler, so
    an await of that task that adds none passed no schedule point (and ran with every other
    task of the process held off)."""

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


@contextlib.contextmanager
def counting_steps() -> Iterator[StepCounter]:
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        yield counter
    finally:
        trio.lowlevel.remove_instrument(counter)


# --- 4c2ddd4: _Turn (one schedule point per call, the locks at once when free) ---------------


async def test_a_call_in_a_cancelled_scope_runs_no_cycle(cluster: Cluster) -> None:
    """The call's schedule point is its cancel point: an already cancelled caller gets
    Cancelled before any cycle starts (the cycle itself is shielded and would commit)."""
    a, b = await indexers(cluster, 2)
    await b.append(kv.put(b"from", b"b"))
    sync_stores(a.store, b.store)  # something for an update of a to take in
    length, applied = a.local_log.length, a.applied_length
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: a.append(kv.put(b"k", b"v")),
        a.update,
        a.ack,
        a.publish_checkpoints,
    ]
    for call in calls:
        with trio.CancelScope() as scope:
            scope.cancel()
            await call()
        assert scope.cancelled_caught
        assert (a.local_log.length, a.applied_length) == (length, applied)
    assert a.failed is None
    await a.update()  # the lock was not left taken, and the base still works
    assert a.applied_length > applied
    assert await kv.get(a.view, b"from") == b"b"


async def test_every_call_passes_a_schedule_point(cluster: Cluster) -> None:
    """One schedule point per call: a caller looping on append/update (an idle update has
    no bee flush to yield in) never keeps other tasks from running."""
    (a,) = await indexers(cluster, 1)
    with counting_steps() as counter:
        for i in range(20):
            before = counter.steps
            await a.update()  # idle: ingests nothing, writes nothing
            assert counter.steps > before, f"update {i} ran without a schedule point"
            before = counter.steps
            await a.append(kv.put(b"k%d" % i, b"v"))
            assert counter.steps > before, f"append {i} ran without a schedule point"


async def _apply_with_yield(nodes: list[Any], view: Bee, host: Any) -> None:
    await trio.lowlevel.checkpoint()  # user code that awaits mid-cycle
    await kv.apply(nodes, view, host)


async def test_write_lock_waiter_gets_turns_between_appends_never_inside(
    cluster: Cluster,
) -> None:
    """A tight append loop next to a task that takes the storage's write lock (what a
    replication session does before storing a peer's batch): that task gets a turn between
    any two appends, and never while a cycle's transaction is open, even though the cycle
    awaits inside apply."""
    (a,) = await indexers(cluster, 1)
    a._apply_fn = _apply_with_yield
    lock, storage = write_lock(a.storage), a.storage
    appended = 0
    turns: list[int] = []  # how many appends had completed at each turn
    done = trio.Event()

    async def other_writer() -> None:
        while not done.is_set():
            async with lock:
                assert not storage.in_transaction, "got the write lock inside a cycle"
                turns.append(appended)
            await trio.lowlevel.checkpoint()

    async def appender() -> None:
        nonlocal appended
        for i in range(30):
            await a.append(kv.put(b"k%d" % i, b"v"))
            appended += 1
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_writer)
        nursery.start_soon(appender)
    assert a.failed is None and a.local_log.length >= 30
    # a turn between any two appends (the lock passes to the waiter at each release): the
    # loop never starved the other writer
    assert set(range(30)) <= set(turns), turns


async def test_update_waiting_for_the_base_lock_is_not_starved_by_appends(
    cluster: Cluster,
) -> None:
    """The base lock is fair under _Turn: acquire_nowait never overtakes a parked waiter."""
    (a,) = await indexers(cluster, 1)
    a._apply_fn = _apply_with_yield  # keep the lock held across a yield inside each cycle
    appended = 0
    finished_at: list[int] = []

    async def appender() -> None:
        nonlocal appended
        for i in range(20):
            await a.append(kv.put(b"k%d" % i, b"v"))
            appended += 1

    async def updater() -> None:
        for _ in range(5):
            await a.update()
            finished_at.append(appended)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(appender)
        nursery.start_soon(updater)
    # each update waited for at most the one cycle that held the lock when it asked
    assert all(done <= i + 1 for i, done in enumerate(finished_at)), finished_at


async def test_reading_holds_cycles_off_and_sees_the_committed_view(cluster: Cluster) -> None:
    (a,) = await indexers(cluster, 1)
    await a.append(kv.put(b"k", b"1"))
    entered, release = trio.Event(), trio.Event()
    appended = trio.Event()

    async def reader() -> None:
        async with a.reading() as view:
            entered.set()
            await release.wait()
            assert await kv.get(view, b"k") == b"1"  # the append is still waiting
            assert not appended.is_set()

    async def writer() -> None:
        await entered.wait()
        await a.append(kv.put(b"k", b"2"))
        appended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(writer)
        await entered.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert not appended.is_set()
        release.set()
    assert await kv.get(a.view, b"k") == b"2"


# --- 856d7a6: trusted nodes ------------------------------------------------------------------


def _random_block(rng: random.Random, keys: list[bytes]) -> OplogBlock:
    lengths = [1, 2, 5, 23, 24, 255, 256, 70000]
    heads = sorted({(rng.choice(keys), rng.choice(lengths)) for _ in range(rng.randint(0, 4))})
    if rng.random() < 0.3:
        return OplogBlock(heads=tuple(heads), batch=1, value=None)
    batch = rng.choice([1, 1, 2, 3, 23, 24, 255, 256, 70000])
    value = rng.randbytes(rng.choice([0, 1, 23, 24, 255, 256, 1000]))
    return OplogBlock(heads=tuple(heads), batch=batch, value=value)


def test_what_decode_block_accepts_passes_check_node() -> None:
    """``Linearizer.add(trusted=True)`` skips ``check_node`` for decoded blocks: anything
    decode_block accepts (mutated bytes included) must build the same Node as ``Node(...)``
    and pass check_node, apart from the own-writer head the base refuses itself."""
    rng = random.Random(20261122)
    keys = [bytes([i]) * 32 for i in range(1, 5)]
    writer = keys[0]
    accepted = checked = 0
    for _ in range(3000):
        data = bytearray(encode_block(_random_block(rng, keys)))
        header = min(len(data), data.index(b"evalue") + 9)  # up to the value's own head
        for _ in range(rng.randint(0, 3)):  # mostly in the header, often a telling byte
            at = rng.randrange(header)
            data[at] = rng.choice([0x00, 0x01, 0x02, 0x20, 0xF4, 0xF5, 0xF6, rng.randrange(256)])
        try:
            block = decode_block(bytes(data))
        except DecodeError:
            continue
        accepted += 1
        length = rng.randint(1, 400)
        trusted = trusted_node(writer, length, block.heads, block.batch, block.value)
        plain = Node(writer, length, block.heads, block.batch, block.value)
        assert trusted == plain
        if any(k == writer and n >= length for k, n in block.heads):
            with pytest.raises(InvalidNodeError):
                check_node(plain)
            continue
        check_node(trusted)
        checked += 1
    assert accepted > 1000 and checked > 500


@pytest.mark.parametrize(
    "fields",
    [
        {"batch": True},  # a CBOR bool where check_node wants an int >= 1
        {"batch": 0},
        {"heads": [[b"\x01" * 32, 0]]},
        {"heads": [[b"\x01" * 32, True]]},
        {"heads": [[b"\x01" * 31, 1]]},
        {"batch": 2, "value": None},  # an ack inside a batch
    ],
)
def test_decode_block_refuses_what_check_node_refuses(fields: dict[str, Any]) -> None:
    obj: dict[str, Any] = {"v": FORMAT_VERSION, "heads": [], "batch": 1, "value": b"x"}
    obj.update(fields)
    data = cbor2.dumps(obj, canonical=True)
    with pytest.raises(DecodeError):
        decode_block(data)


@pytest.mark.parametrize(
    "second",
    [
        OplogBlock(heads=(), batch=1, value=b"breaks the countdown"),
        OplogBlock(heads=(), batch=1, value=None),  # an ack inside the batch
        OplogBlock(heads=((b"\x07" * 32, 1),), batch=2, value=b"heads inside a batch"),
    ],
)
async def test_batch_rules_still_hold_for_trusted_nodes(
    cluster: Cluster, second: OplogBlock
) -> None:
    """decode_block cannot check the batch rules (they need the previous block): the
    linearizer still refuses such blocks from a writer running other software."""
    a, b, c = await indexers(cluster, 3)
    if second.heads:
        second = second._replace(heads=((a.local_key, 1),))
    c.local_log.append(
        [
            encode_block(OplogBlock(heads=(), batch=3, value=kv.put(b"x", b"1"))),
            encode_block(second),
        ]
    )
    await converge([a, b])
    sync_stores(a.store, c.store)
    await a.update()
    assert c.local_key in a.bad_writers
    assert "batch" in a.bad_writers[c.local_key]
    assert await kv.get(a.view, b"x") is None
    await a.append(kv.put(b"still", b"fine"))
    await converge([a, b])
    assert a.unconfirmed_values == 0 and a.failed is None


# --- 1fc3f83: an append cycle ingests only its own oplog after appending -------------------


async def test_an_append_takes_in_remote_blocks_stored_before_it(cluster: Cluster) -> None:
    a, b = await indexers(cluster, 2)
    await b.append(kv.put(b"b", b"1"))
    sync_stores(a.store, b.store)  # stored, no update ran on a
    await a.append(kv.put(b"a", b"1"))
    # the cycle's full ingest took b's node in, and a's new node depends on it
    assert await kv.get(a.view, b"b") == b"1"
    last = decode_block(a.local_log.get(a.local_log.length - 1))
    assert (b.local_key, b.local_log.length) in last.heads


async def test_a_block_stored_while_an_append_cycle_runs_is_taken_by_the_next_update(
    cluster: Cluster,
) -> None:
    """A peer's batch that arrives during a cycle waits for the write lock (as replication
    does), is stored after the cycle, and the next update takes it in."""
    a, b = await indexers(cluster, 2)
    await b.append(kv.put(b"late", b"1"))
    in_apply, go_on = trio.Event(), trio.Event()

    async def apply_waiting(nodes: list[Any], view: Bee, host: Any) -> None:
        in_apply.set()
        await go_on.wait()
        await kv.apply(nodes, view, host)

    stored = trio.Event()
    inside: list[bool] = []  # the session's turn came inside the cycle's transaction

    async def session() -> None:  # what a replication session does with a batch
        await in_apply.wait()
        async with write_lock(a.storage):
            inside.append(a.storage.in_transaction)
            if not a.storage.in_transaction:
                sync_stores(a.store, b.store)
        stored.set()

    a._apply_fn = apply_waiting
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session)
        nursery.start_soon(a.append, kv.put(b"a", b"1"))
        await in_apply.wait()
        await trio.testing.wait_all_tasks_blocked()
        waited = not stored.is_set()  # the session waits for the cycle
        go_on.set()
    a._apply_fn = kv.apply
    assert waited and inside == [False]
    assert stored.is_set() and await kv.get(a.view, b"late") is None
    await a.update()
    assert await kv.get(a.view, b"late") == b"1"
    await converge([a, b])
    assert a.unconfirmed_values == 0 and a.view_log.tree_hash() == b.view_log.tree_hash()


# --- 90dfd1b: state and certificate records under base/~… ----------------------------------


async def test_old_keys_are_the_newer_records_when_both_are_present(cluster: Cluster) -> None:
    """Both keys exist only if a base was written under the old keys after the new ones
    (software downgraded and upgraded again): the old records are the newer ones."""
    (a,) = await indexers(cluster, 1)
    await a.append(kv.put(b"k", b"1"))
    stale_state = a.storage.get(NEW_STATE)
    stale_cert = a.storage.get(CERTIFICATE_KEY)
    await a.append([kv.put(b"k", b"2"), kv.put(b"j", b"3")])
    applied, signed = a.applied_length, a.signed_length
    storage = a.storage
    assert stale_state is not None and stale_cert is not None
    with storage.transaction():
        storage.put(OLD_STATE, storage.get(NEW_STATE) or b"")
        storage.put(OLD_CERTIFICATE, storage.get(CERTIFICATE_KEY) or b"")
        storage.put(NEW_STATE, stale_state)
        storage.put(CERTIFICATE_KEY, stale_cert)
    a = await cluster.restart("a")
    assert (a.applied_length, a.signed_length) == (applied, signed)
    assert a.storage.get(OLD_STATE) is None and a.storage.get(OLD_CERTIFICATE) is None
    await a.append(kv.put(b"k", b"4"))
    assert await kv.get(a.view, b"k") == b"4" and a.unconfirmed_values == 0


async def test_a_migration_that_fails_halfway_leaves_the_old_records(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move runs in one transaction: a failure (or a kill) in the middle of it leaves
    the old records where they were, and the next open moves them."""
    (a,) = await indexers(cluster, 1)
    await a.append(kv.put(b"k", b"v"))
    applied, signed = a.applied_length, a.signed_length
    storage = a.storage
    with storage.transaction():
        for old, new in ((OLD_STATE, NEW_STATE), (OLD_CERTIFICATE, CERTIFICATE_KEY)):
            value = storage.get(new)
            assert value is not None
            storage.put(old, value)
            storage.delete(new)
    await a.close()
    cluster.stores.pop("a").close()

    real_delete = Storage.delete

    def failing_delete(self: Storage, key: bytes) -> None:
        real_delete(self, key)
        if key == OLD_STATE:  # the state moved, the certificate not yet
            raise OSError("disk went away")

    monkeypatch.setattr(Storage, "delete", failing_delete)
    store = Store.open(cluster.root / "a")
    with pytest.raises(OSError):
        await open_kv_base(store, a.key)
    assert store.storage.get(OLD_STATE) is not None  # rolled back: nothing moved
    assert store.storage.get(NEW_STATE) is None
    store.close()
    monkeypatch.setattr(Storage, "delete", real_delete)
    a = await cluster.open("a", a.key)
    assert (a.applied_length, a.signed_length) == (applied, signed)
    assert a.storage.get(OLD_STATE) is None and a.storage.get(OLD_CERTIFICATE) is None


# --- 5649120: a bee flush yields only if its task did not since the previous flush --------


async def test_a_long_apply_lets_other_tasks_run_between_its_flushes(cluster: Cluster) -> None:
    """An apply that flushes once per value: the first flush follows the call's schedule
    point and need not yield, every later one must (or one append of many values would hold
    every other task of the process, replication included, for the whole apply)."""
    (a,) = await indexers(cluster, 1)
    flushes = 0

    async def apply_flushing_each(nodes: list[Any], view: Bee, host: Any) -> None:
        nonlocal flushes
        for node in nodes:
            await kv.apply([node], view, host)  # one bee flush per value
            flushes += 1

    a._apply_fn = apply_flushing_each
    with counting_steps() as counter:
        flushes_before = flushes
        await a.append([kv.put(b"k%d" % i, b"v") for i in range(20)])
        ran = counter.steps
    assert flushes - flushes_before >= 20
    # the call's own schedule point, then one per flush after the first
    assert ran >= 20, f"{ran} yields for {flushes - flushes_before} flushes"
    assert [await kv.get(a.view, b"k%d" % i) for i in (0, 19)] == [b"v", b"v"]


def test_the_bee_reads_trios_per_task_schedule_count() -> None:
    """The flush rule reads trio's private per-task count; without it every flush yields
    (safe but slower). Pin that this trio still has it and that it counts yields."""
    from autobase_py.bee.core import _schedule_points

    async def main() -> None:
        task = trio.lowlevel.current_task()
        first = _schedule_points(task)
        assert first >= 0
        await trio.lowlevel.checkpoint()
        assert _schedule_points(task) == first + 1
        await trio.lowlevel.checkpoint_if_cancelled()  # not cancelled: no yield
        assert _schedule_points(task) == first + 1

    trio.run(main)


def test_encoding_field_refuses_bool_for_int() -> None:
    """decode_block's checked path relies on it for batch (check_node's _is_count rule)."""
    with pytest.raises(DecodeError):
        encoding.field({"batch": True}, "batch", int, "oplog block")
