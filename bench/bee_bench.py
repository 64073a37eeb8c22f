"""Benchmarks of the bee (the view store) on a real log in a real SQLite store.

Prints one JSON object per line: puts/s (1 and 100 per flush, random and sequential keys),
the base's apply pattern (1-put flushes into an unsigned, non-durable log, one storage
transaction per flush, without and with every round of three flushes truncated and re-applied;
also as process CPU per flush, the figure to compare on a shared machine; and once more with
another schedule point before each flush, as in a base cycle),
gets/s on 100,000 keys (hot cache), range scan entries/s, bytes on disk per entry, blocks per
flush, and blocks touched / blocks and bytes fetched per sparse lookup at 10,000 and 100,000
entries.

Run from the repository root: ``.venv/bin/python bench/bee_bench.py`` (``--quick`` for a
smaller run, ``--pack-bytes=N`` to try another pack size, ``--apply-only`` for the apply
figures alone). Numbers depend on the machine;
compare runs on the same one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from autobase_py.bee import Bee  # noqa: E402
from autobase_py.log import Log, decode_proof, encode_proof  # noqa: E402
from autobase_py.store import Store  # noqa: E402
from autobase_py.testing.counting_log import CountingLog  # noqa: E402

QUICK = "--quick" in sys.argv
# --pack-bytes=N: the block size flushes pack nodes into (default: the bee's default)
PACK: dict[str, int] = {}
for arg in sys.argv:
    if arg.startswith("--pack-bytes="):
        PACK["pack_bytes"] = int(arg.split("=", 1)[1])


def emit(bench: str, figure: str, value: float, unit: str, **params: Any) -> None:
    print(json.dumps({"bench": bench, "figure": figure, "value": round(value, 2), "unit": unit,
                      **params}), flush=True)


def key(i: int) -> bytes:
    return b"model/%08d" % i


def value(i: int) -> bytes:
    # about the size of a registry entry: a name, a 32-byte key, a type
    return b"%08d" % i + bytes(32) + b"type:llm"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def fill(bee: Bee, order: list[int], per_flush: int) -> float:
    start = time.perf_counter()
    for at in range(0, len(order), per_flush):
        batch = bee.batch()
        for i in order[at : at + per_flush]:
            batch.put(key(i), value(i))
        await batch.flush()
    return time.perf_counter() - start


async def bench_puts(root: Path) -> None:
    n_single = 1000 if QUICK else 3000
    for name, order in [
        ("random", random.Random(1).sample(range(10**6), n_single)),
        ("sequential", list(range(n_single))),
    ]:
        store = Store.open(root / f"single-{name}")
        bee = Bee(store.get(name="view"), **PACK)
        took = await fill(bee, order, 1)
        emit("bee", f"puts_per_s_1_per_flush_{name}", n_single / took, "puts/s", n=n_single)
        store.close()
    n = 20_000 if QUICK else 100_000
    for name, order in [
        ("random", random.Random(2).sample(range(n), n)),
        ("sequential", list(range(n))),
    ]:
        path = root / f"batched-{name}"
        store = Store.open(path)
        log = store.get(name="view")
        bee = Bee(log, **PACK)
        took = await fill(bee, order, 100)
        emit("bee", f"puts_per_s_100_per_flush_{name}", n / took, "puts/s", n=n)
        emit("bee", f"blocks_per_flush_100_per_flush_{name}", log.length / (n / 100), "blocks",
             n=n, pack_bytes=bee.pack_bytes)
        emit("bee", f"log_bytes_per_entry_{name}", log.byte_length / n, "bytes/entry", n=n,
             note="block bytes appended (all versions), 100 puts per flush")
        store.close()
        emit("bee", f"disk_bytes_per_entry_{name}", folder_bytes(path) / n, "bytes/entry", n=n,
             note="whole SQLite folder incl. Merkle nodes and WAL, 100 puts per flush")


def record(i: int) -> bytes:
    """A base_bench-like 139..157-byte JSON value."""
    return json.dumps(
        {"name": f"model-{i:08d}", "driveKey": f"{i:064x}", "type": "text-generation",
         "description": "a test model"}, separators=(",", ":")).encode()


async def bench_apply(root: Path) -> None:
    """What a base's apply does: every value is one ``batch.put`` + ``flush`` on the view bee
    (unsigned, non-durable appends) inside an open storage transaction; three writers with
    their own increasing key ranges interleave. ``undo`` additionally truncates the view back
    over each round of three flushes and re-applies the round in another order, as a base does
    when the linearizer reorders (every value is then applied twice). ``cycle`` (no undo) passes
    another schedule point before each flush, as a single writer's base does (its cycle takes a
    lock first), so the flush itself need not yield."""
    n = 1500 if QUICK else 6000
    per = n // 3
    names = [[f"model-{w * per + j:08d}".encode() for j in range(per)] for w in range(3)]
    for undo, cycle in ((False, False), (True, False), (False, True)):
        store = Store.open(root / f"apply-{undo}-{cycle}")
        log = store.get(name="view")
        log.durable_appends = False
        log.signed_appends = False
        bee = Bee(log, **PACK)
        storage = store.storage
        flushes = 0
        start = time.perf_counter()
        cpu = time.process_time()
        for j in range(per):
            round_ = [(names[w][j], record(w * per + j)) for w in range(3)]
            before = log.length
            orders = [round_, round_[1:] + round_[:1]] if undo else [round_]
            for at, order in enumerate(orders):
                if at:
                    log.truncate(before)
                for k, v in order:
                    if cycle:
                        await trio.lowlevel.checkpoint()
                    with storage.transaction(flat=True):
                        batch = bee.batch()
                        batch.put(k, v)
                        await batch.flush()
                    flushes += 1
        took = time.perf_counter() - start
        cpu_us = (time.process_time() - cpu) / flushes * 1e6
        figure = "apply_flushes_per_s_unsigned_" + (
            "with_undo" if undo else "one_per_cycle" if cycle else "no_undo")
        emit("bee", figure, flushes / took, "flushes/s", n=n, flushes=flushes,
             cpu_us_per_flush=round(cpu_us, 1),
             note="1 put per flush, one flat storage transaction per flush (as a base applies)" + (
                 "; each round of 3 flushes truncated and re-applied once" if undo else
                 "; another schedule point before each flush (a base cycle's lock)" if cycle
                 else ""))
        store.close()


async def bench_reads(root: Path) -> None:
    n = 20_000 if QUICK else 100_000
    store = Store.open(root / "reads")
    log = store.get(name="view")
    bee = Bee(log, **PACK)
    await fill(bee, random.Random(3).sample(range(n), n), 1000)
    rng = random.Random(4)
    probes = [key(rng.randrange(n)) for _ in range(50_000)]
    for k in probes[:20_000]:  # warm the cache
        await bee.get(k)
    start = time.perf_counter()
    for k in probes:
        await bee.get(k)
    took = time.perf_counter() - start
    emit("bee", "gets_per_s_hot", len(probes) / took, "gets/s", n=n)

    start = time.perf_counter()
    count = 0
    async for _ in bee.range():
        count += 1
    took = time.perf_counter() - start
    assert count == n
    emit("bee", "range_scan_entries_per_s_hot", count / took, "entries/s", n=n)
    cold = Bee(log)
    start = time.perf_counter()
    count = 0
    async for _ in cold.range():
        count += 1
    took = time.perf_counter() - start
    emit("bee", "range_scan_entries_per_s_cold", count / took, "entries/s", n=n,
         note="fresh bee: every node read from SQLite and decoded")
    store.close()


async def bench_sparse(root: Path) -> None:
    for n in ([10_000] if QUICK else [10_000, 100_000]):
        writer_store = Store.open(root / f"sparse-w-{n}")
        replica_store = Store.open(root / f"sparse-r-{n}")
        wlog = writer_store.get(name="view")
        wbee = Bee(wlog, **PACK)
        await fill(wbee, random.Random(5).sample(range(n), n), 1000)
        rng = random.Random(6)
        probes = [key(rng.randrange(n)) for _ in range(200)]

        touched = []
        for k in probes[:50]:
            counting = CountingLog(wlog)
            assert await Bee(counting).get(k) is not None
            touched.append(counting.reads)
        emit("bee", "blocks_touched_per_lookup", sum(touched) / len(touched), "blocks", n=n,
             note="cold cache: every node on the path")

        rlog = replica_store.get(key=wlog.key)
        rlog.apply_proof(decode_proof(encode_proof(wlog.proof(None, upgrade_from=0))))

        fetched: list[int] = []

        async def source(
            index: int, length: int, wlog: Log = wlog, fetched: list[int] = fetched
        ) -> Any:
            fetched.append(index)
            return decode_proof(encode_proof(wlog.proof(index)))

        rbee = Bee(rlog, source=source)
        assert await rbee.get(probes[0]) is not None
        first = rbee.blocks_fetched
        for k in probes[1:]:
            assert await rbee.get(k) is not None
        emit("bee", "blocks_fetched_first_sparse_lookup", first, "blocks", n=n,
             note="empty replica")
        emit("bee", "block_bytes_fetched_first_sparse_lookup",
             sum(len(wlog.get(i)) for i in fetched[:first]), "bytes", n=n,
             note="empty replica; block bytes only, proofs not counted")
        emit("bee", "blocks_fetched_per_sparse_lookup_avg", rbee.blocks_fetched / len(probes),
             "blocks", n=n, lookups=len(probes),
             note="one replica, upper levels shared between lookups")
        emit("bee", "block_bytes_fetched_per_sparse_lookup_avg",
             sum(len(wlog.get(i)) for i in fetched) / len(probes), "bytes", n=n,
             lookups=len(probes), note="block bytes only, proofs not counted")
        writer_store.close()
        replica_store.close()


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bee-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        if "--apply-only" not in sys.argv:
            await bench_puts(root)
        await bench_apply(root)
        if "--apply-only" in sys.argv:
            return
        await bench_reads(root)
        await bench_sparse(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
