"""Benchmark the base with the JS anchor's workloads (../shared/anchors/js-autobase).

Each op is a 139-byte JSON record ``{name, driveKey (hex), type, description}``; ``apply``
writes every op into a Bee view keyed by name (one bee batch per apply call, i.e. per atomic
append), acks are skipped, ``{"addWriter": key}`` ops add an indexer.

Figures (JSON lines):
- ``a_single_writer``: one base, N ops appended one by one (``--chunk 1``) or 100 per append,
  timed until all are applied, confirmed and covered by a certificate (signed_length).
- ``b_three_indexers``: three bases in one process, each appending N/3 ops round-robin;
  after every round the three stores are synced pairwise with real proofs and updated (acks
  happen inside update). Timed until all three applied everything, confirmed it and hold a
  certificate covering it, with equal view tree hashes.
- ``reopen``: time to reopen the single-writer base from disk (no replay), at this N.
- ``peak_rss_mib``: ru_maxrss of the process.

``--no-fsync`` opens the stores with ``fsync=False`` (commits atomic and ``kill -9``-safe, not
power-loss durable: RocksDB's default, which the JS stack uses); every figure says which.

Usage: ``.venv/bin/python bench/base_bench.py [--n 20000] [--chunk 1|100] [--scenario a|b|all]
[--no-fsync]``
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from autobase_py.base.core import Autobase  # noqa: E402
from autobase_py.base.host import ApplyHost, ApplyNode  # noqa: E402
from autobase_py.bee import Bee  # noqa: E402
from autobase_py.log import Log  # noqa: E402
from autobase_py.store import Store  # noqa: E402
from autobase_py.testing.sync import publish_all, sync  # noqa: E402


def record(i: int) -> bytes:
    rec = {
        "name": f"model-{i:08d}",
        "driveKey": f"{i:064x}",
        "type": "text-generation",
        "description": "a test model",
    }
    return json.dumps(rec, separators=(",", ":")).encode()


def open_view(log: Log) -> Bee:
    return Bee(log)


async def apply(nodes: list[ApplyNode], view: Bee, host: ApplyHost) -> None:
    batch = view.batch()
    for node in nodes:
        op = json.loads(node.value)
        if "addWriter" in op:
            host.add_writer(bytes.fromhex(op["addWriter"]), indexer=True)
            continue
        batch.put(op["name"].encode(), node.value)
    await batch.flush()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SETTINGS = {"fsync": True}


def emit(figure: str, **fields: Any) -> None:
    print(json.dumps({"bench": "base", "figure": figure, **fields, "fsync": SETTINGS["fsync"],
                      "rss_mib": round(rss_mib())}), flush=True)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def open_base(path: Path, bootstrap: bytes | None = None) -> tuple[Store, Autobase[Bee]]:
    store = Store.open(path, fsync=SETTINGS["fsync"])
    base: Autobase[Bee] = await Autobase.open(store, bootstrap, apply=apply, open_view=open_view)
    return store, base


async def single_writer(root: Path, n: int, chunk: int) -> None:
    store, base = await open_base(root / "single")
    t0, c0 = time.perf_counter(), cpu()
    for start in range(0, n, chunk):
        values = [record(i) for i in range(start, min(n, start + chunk))]
        await base.append(values if chunk > 1 else values[0])
    while base.signed_length < base.confirmed_length:
        await base.publish_checkpoints()
    elapsed, used = time.perf_counter() - t0, cpu() - c0
    assert base.unconfirmed_values == 0
    assert await base.view.get(b"model-%08d" % (n - 1)) == record(n - 1)
    emit("a_single_writer", n=n, chunk=chunk, ops_per_s=round(n / elapsed), seconds=round(
        elapsed, 2), cpu_s=round(used, 2), signed_length=base.signed_length)
    await base.close()
    store.close()
    t0 = time.perf_counter()
    store, base = await open_base(root / "single")
    emit("reopen", applied_nodes=base.applied_length, ms=round((time.perf_counter() - t0) * 1000,
                                                                   1))
    await base.close()
    store.close()


async def three_indexers(root: Path, n: int, chunk: int) -> None:
    opened = [await open_base(root / "w1")]
    key = opened[0][1].key
    opened += [await open_base(root / f"w{i}", key) for i in (2, 3)]
    bases = [b for _, b in opened]
    await bases[0].append(
        [json.dumps({"addWriter": b.local_key.hex()}).encode() for b in bases[1:]]
    )
    for _ in range(4):
        await sync(*bases)
    assert all(b.is_indexer for b in bases)
    t0, c0 = time.perf_counter(), cpu()
    per = n // 3
    i = 0
    while i < per:
        for w, base in enumerate(bases):
            values = [record(w * per + j) for j in range(i, min(per, i + chunk))]
            await base.append(values if chunk > 1 else values[0])
        i += chunk
        await sync(*bases)
    appended = time.perf_counter() - t0
    rounds = 0
    while True:
        rounds += 1
        await sync(*bases)
        done = all(b.unconfirmed_values == 0 for b in bases)
        hashes = {b.view_log.tree_hash() for b in bases}
        if done and len(hashes) == 1 and all(
            b.signed_length >= b.checkpoint.confirmed_length  # type: ignore[union-attr]
            for b in bases
        ):
            break
        await publish_all(bases)
        if rounds > 200:
            raise RuntimeError("did not converge")
    elapsed, used = time.perf_counter() - t0, cpu() - c0
    emit("b_three_indexers", n=per * 3, chunk=chunk, ops_per_s=round(per * 3 / elapsed),
         seconds=round(elapsed, 2), append_phase_s=round(appended, 2),
         converge_rounds=rounds, cpu_s=round(used, 2),
         oplog_lengths=[b.local_log.length for b in bases])
    for store, base in opened:
        await base.close()
        store.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=1)
    parser.add_argument("--scenario", default="all")
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    SETTINGS["fsync"] = not args.no_fsync
    root = Path(tempfile.mkdtemp(prefix=".bench-base-", dir=ROOT))
    try:
        if args.scenario in ("a", "all"):
            await single_writer(root, args.n, args.chunk)
        if args.scenario in ("b", "all"):
            await three_indexers(root, args.n, args.chunk)
        emit("peak_rss_mib", value=round(rss_mib()))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
