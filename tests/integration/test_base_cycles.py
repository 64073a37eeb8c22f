"""A long drain runs as several bounded cycles (``CYCLE_NODES`` order positions each).

A peer catching up on many nodes commits after every cycle and lets other tasks take turns in
between (readers, replication); a catch-up cut short keeps what its cycles committed, and
after a restart the base resumes from there to the same view as everyone else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from autobase_py.base import core as base_core
from autobase_py.base.core import Autobase
from autobase_py.bee import Bee
from autobase_py.testing import kv
from autobase_py.testing.cluster import Cluster
from autobase_py.testing.sync import sync_stores

Base = Autobase[Bee]
BATCHES, BATCH = 40, 25  # 1,000 value nodes: about four cycles of 256


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster[Base]]:
    c: Cluster[Base] = Cluster(tmp_path, kv.open_base)
    yield c
    await c.close()


async def writer_with_history(cluster: Cluster[Base]) -> Base:
    writer = await cluster.open("writer")
    for b in range(BATCHES):
        await writer.append([kv.put(b"k%d" % (b * BATCH + i), b"v%d" % b) for i in range(BATCH)])
    return writer


async def first_confirmed(base: Base) -> None:
    async for event in base.events():
        if event.kind == "confirmed":
            return


async def test_a_catch_up_commits_cycle_by_cycle_and_lets_a_reader_in(
    cluster: Cluster[Base],
) -> None:
    writer = await writer_with_history(cluster)
    reader = await cluster.open("reader", writer.key)
    sync_stores(writer.store, reader.store)
    assert writer.applied_length > 3 * base_core.CYCLE_NODES
    seen: list[int] = []

    async def read_during_the_catch_up() -> None:
        await first_confirmed(reader)
        async with reader.reading():
            seen.append(reader.applied_length)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_during_the_catch_up)
            await trio.testing.wait_all_tasks_blocked()  # subscribed before the update
            await reader.update()
    assert 0 < seen[0] < writer.applied_length  # it read between two cycles
    assert reader.applied_length == writer.applied_length
    assert reader.view_log.tree_hash() == writer.view_log.tree_hash()


async def test_a_catch_up_cut_short_resumes_after_a_restart(cluster: Cluster[Base]) -> None:
    writer = await writer_with_history(cluster)
    reader = await cluster.open("reader", writer.key)
    sync_stores(writer.store, reader.store)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def cut_short() -> None:
                await first_confirmed(reader)
                nursery.cancel_scope.cancel()  # lands between two cycles

            nursery.start_soon(cut_short)
            await trio.testing.wait_all_tasks_blocked()
            await reader.update()
    committed = reader.applied_length
    assert 0 < committed < writer.applied_length
    reader = await cluster.restart("reader")
    assert reader.applied_length == committed  # what the cycles committed, nothing replayed
    await reader.update()
    assert reader.applied_length == writer.applied_length
    assert reader.view_log.tree_hash() == writer.view_log.tree_hash()
    assert await kv.journal(reader.view) == await kv.journal(writer.view)
