"""Benchmarks of the model registry on real stores (SQLite folders in a temp directory).

Prints one JSON object per line:

* registry puts/s through the full op path (validate -> encode op -> append -> linearize ->
  apply -> record + 3 index keys) for one writer, 1 op per append and 100 per append, with the
  same figures for the base's tiny key-value app (``autobase_py.testing.kv``) as a baseline, so
  the registry layer's own cost is the difference;
* puts/s with 3 indexers in one process (writes spread over the three, synced by real proofs,
  timed until every put is confirmed everywhere);
* lookups/s by name, by drive key, by type and by owner on 100,000 entries (one result per
  drive key, 10 per type and owner), hot cache.

Run from the repository root: ``.venv/bin/python bench/registry_bench.py`` (``--quick`` for a
smaller run). Numbers depend on the machine; compare runs on the same one.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from autobase_py.base.core import Autobase  # noqa: E402
from autobase_py.bee import Bee  # noqa: E402
from autobase_py.store import Store  # noqa: E402
from autobase_py.testing import kv  # noqa: E402
from autobase_py.testing.sync import converge  # noqa: E402
from registry import Entry, Registry  # noqa: E402
from registry.service import RegistryService  # noqa: E402

QUICK = "--quick" in sys.argv


def emit(bench: str, figure: str, value: float, unit: str, **params: Any) -> None:
    print(json.dumps({"bench": bench, "figure": figure, "value": round(value, 2), "unit": unit,
                      **params}), flush=True)


def drive_key(i: int) -> bytes:
    return i.to_bytes(8, "big") * 4


def entry(i: int, *, types: int = 10_000, owners: int = 10_000) -> Entry:
    return Entry(f"model-{i:08d}", drive_key(i), f"type-{i % types}",
                 "a model", f"owner-{i % owners}")


CPU = {"seconds": 0.0}  # process CPU time of the last timed() call


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    """Wall-clock seconds of ``fn``; its process CPU seconds go to ``CPU["seconds"]`` (less
    disturbed than wall time by other processes on a shared machine, and blind to fsync
    waits, so the two together separate "our code got slower" from "the machine was busy")."""
    start, cpu = time.perf_counter(), time.process_time()
    await fn()
    CPU["seconds"] = time.process_time() - cpu
    return time.perf_counter() - start


def cpu_us_per(n: int) -> float:
    return round(CPU["seconds"] / n * 1e6, 1)


async def single_writer(root: Path, n: int, per_append: int) -> None:
    store = Store.open(root / f"reg-{per_append}")
    svc = await RegistryService.open(store)

    async def run() -> None:
        for start in range(0, n, per_append):
            await svc.put_entries([entry(i) for i in range(start, start + per_append)])

    seconds = await timed(run)
    assert svc.base.unconfirmed_values == 0
    emit("registry", "puts_per_second_one_writer", n / seconds, "puts/s", per_append=per_append,
         puts=n, cpu_us_per_put=cpu_us_per(n))
    await svc.close()
    store.close()

    store = Store.open(root / f"kv-{per_append}")
    base = await Autobase.open(store, apply=kv.apply, open_view=kv.open_view)

    async def run_kv() -> None:
        for start in range(0, n, per_append):
            e = [entry(i) for i in range(start, start + per_append)]
            await base.append([kv.put(x.name.encode(), x.drive_key + x.type.encode()) for x in e])

    seconds = await timed(run_kv)
    emit("registry", "baseline_kv_puts_per_second_one_writer", n / seconds, "puts/s",
         per_append=per_append, puts=n, cpu_us_per_put=cpu_us_per(n))
    await base.close()
    store.close()


async def three_indexers(root: Path, n: int, per_append: int, sync_every: int) -> None:
    stores = [Store.open(root / f"three-{per_append}-{x}") for x in "abc"]
    a = await RegistryService.open(stores[0])
    b = await RegistryService.open(stores[1], a.key)
    c = await RegistryService.open(stores[2], a.key)
    nodes = [a, b, c]
    await a.add_writer(b.local_key)
    await a.add_writer(c.local_key)
    await converge([x.base for x in nodes])
    appends = n // per_append

    async def run() -> None:
        for k in range(appends):
            node = nodes[k % 3]
            start = k * per_append
            await node.put_entries([entry(i) for i in range(start, start + per_append)])
            if (k + 1) % sync_every == 0:
                await converge([x.base for x in nodes])
        await converge([x.base for x in nodes])

    seconds = await timed(run)
    for x in nodes:
        assert x.base.unconfirmed_values == 0
        assert await x.view.get(entry(n - 1).name) is not None
    emit("registry", "puts_per_second_three_indexers", n / seconds, "puts/s",
         per_append=per_append, puts=n, sync_every_appends=sync_every,
         cpu_us_per_put=cpu_us_per(n))
    for x in nodes:
        await x.close()
    for s in stores:
        s.close()


async def lookups(root: Path, n: int, queries: int) -> None:
    store = Store.open(root / "lookups")
    reg = Registry(Bee(store.get(name="view")))
    types = owners = n // 10  # 10 entries per type and per owner
    chunk = 1000

    async def build() -> None:
        for start in range(0, n, chunk):
            with store.storage.transaction():
                async with reg.transaction() as tx:
                    for i in range(start, min(n, start + chunk)):
                        await tx.put(entry(i, types=types, owners=owners))

    seconds = await timed(build)
    emit("registry", "bulk_load_puts_per_second", n / seconds, "puts/s", entries=n,
         per_transaction=chunk, cpu_us_per_put=cpu_us_per(n))
    rng = random.Random(1)
    picks = [rng.randrange(n) for _ in range(queries)]

    async def by_name() -> None:
        for i in picks:
            assert await reg.get(f"model-{i:08d}") is not None

    async def by_drive_key() -> None:
        for i in picks:
            assert await reg.get_by_drive_key(drive_key(i)) is not None

    async def by_type() -> None:
        for i in picks:
            assert len([e async for e in reg.entries_of_type(f"type-{i % types}")]) == 10

    async def by_owner() -> None:
        for i in picks:
            assert len([e async for e in reg.entries_of_owner(f"owner-{i % owners}")]) == 10

    for figure, fn, per in (
        ("lookups_per_second_by_name", by_name, 1),
        ("lookups_per_second_by_drive_key", by_drive_key, 1),
        ("lookups_per_second_by_type", by_type, 10),
        ("lookups_per_second_by_owner", by_owner, 10),
    ):
        await fn()  # warm the cache
        seconds = await timed(fn)
        emit("registry", figure, queries / seconds, "lookups/s", entries=n, queries=queries,
             results_per_lookup=per, cpu_us_per_lookup=cpu_us_per(queries))
    store.close()


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    try:
        await single_writer(root, 200 if QUICK else 1000, 1)
        await single_writer(root, 2000 if QUICK else 20_000, 100)
        await three_indexers(root, 150 if QUICK else 600, 1, 10)
        await three_indexers(root, 1500 if QUICK else 15_000, 100, 3)
        await lookups(root, 10_000 if QUICK else 100_000, 2000 if QUICK else 10_000)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
