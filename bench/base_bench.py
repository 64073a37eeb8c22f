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
- ``b_three_indexers_live``: the JS anchor's shape: three bases in one process, each with
  its own endpoint on 127.0.0.1 (Noise + secretstream over real TCP sockets), connected
  pairwise, replication running (``BaseReplication``: updates on arrival, jittered acks,
  checkpoint publishing when quiet); the three writers append their N/3 ops concurrently, then
  the figure waits until all three applied, confirmed and certified everything with equal
  views.
- ``reopen``: time to reopen the single-writer base from disk (no replay), at this N.
- ``peak_rss_mib``: ru_maxrss of the process.

The three-indexer figures also print ``applies_per_value``: how many times each peer passed a
value to ``apply`` on average (1.0 = never re-applied; an undo re-applies what it rolled back).

``--no-fsync`` opens the stores with ``fsync=False`` (commits atomic and ``kill -9``-safe, not
power-loss durable: RocksDB's default, which the JS stack uses); every figure says which.

Usage: ``.venv/bin/python bench/base_bench.py [--n 20000] [--chunk 1|100] [--scenario a|b|live|all]
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

from autobase_py import crypto  # noqa: E402
from autobase_py.base.core import Autobase  # noqa: E402
from autobase_py.base.host import ApplyHost, ApplyNode  # noqa: E402
from autobase_py.bee import Bee  # noqa: E402
from autobase_py.log import Log  # noqa: E402
from autobase_py.net.base_trio import BaseReplication  # noqa: E402
from autobase_py.net.endpoint_trio import open_endpoint  # noqa: E402
from autobase_py.net.replication_trio import Replicator  # noqa: E402
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


APPLIED = {"values": 0}  # values passed to apply, re-applies after an undo included


def applies_per_value(since: int, values: int, peers: int = 3) -> float:
    """Values each peer passed to apply since ``APPLIED["values"]`` was ``since``, per value."""
    return round((APPLIED["values"] - since) / (values * peers), 2)


async def apply(nodes: list[ApplyNode], view: Bee, host: ApplyHost) -> None:
    APPLIED["values"] += len(nodes)
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
    t0, c0, applied0 = time.perf_counter(), cpu(), APPLIED["values"]
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
         applies_per_value=applies_per_value(applied0, per * 3),
         oplog_lengths=[b.local_log.length for b in bases])
    for store, base in opened:
        await base.close()
        store.close()


async def three_indexers_live(root: Path, n: int, chunk: int) -> None:
    opened = [await open_base(root / "l1")]
    key = opened[0][1].key
    opened += [await open_base(root / f"l{i}", key) for i in (2, 3)]
    bases = [b for _, b in opened]
    replications = [BaseReplication(b, Replicator(b.store)) for b in bases]

    async def done(expect_values: int) -> bool:
        views = {b.view_log.tree_hash() for b in bases}
        return len(views) == 1 and all(
            b.unconfirmed_values == 0
            and b.checkpoint is not None
            and b.checkpoint.confirmed_length >= expect_values
            and b.signed_length >= b.checkpoint.confirmed_length
            for b in bases
        )

    async with trio.open_nursery() as nursery:
        endpoints = []
        for replication in replications:
            endpoint = await nursery.start(_endpoint, replication)
            endpoints.append(endpoint)
        ports = [await e.listen("127.0.0.1") for e in endpoints]
        for i, endpoint in enumerate(endpoints):
            for j in range(i + 1, len(endpoints)):
                await endpoint.connect("127.0.0.1", ports[j])
        await replications[0].append(
            [json.dumps({"addWriter": b.local_key.hex()}).encode() for b in bases[1:]]
        )
        await _poll(lambda: _all_indexers(bases))
        setup_values = bases[0].applied_length
        per = n // 3
        t0, c0, applied0 = time.perf_counter(), cpu(), APPLIED["values"]

        async def writer(w: int) -> None:
            for start in range(0, per, chunk):
                values = [record(w * per + j) for j in range(start, min(per, start + chunk))]
                await replications[w].append(values if chunk > 1 else values[0])

        async with trio.open_nursery() as writers:
            for w in range(3):
                writers.start_soon(writer, w)
        appended = time.perf_counter() - t0
        expect = setup_values + per * 3  # order positions of every value (acks add more)
        await _poll(lambda: done(expect))
        elapsed, used = time.perf_counter() - t0, cpu() - c0
        emit("b_three_indexers_live", n=per * 3, chunk=chunk, ops_per_s=round(per * 3 / elapsed),
             seconds=round(elapsed, 2), append_phase_s=round(appended, 2), cpu_s=round(used, 2),
             applies_per_value=applies_per_value(applied0, per * 3),
             oplog_lengths=[b.local_log.length for b in bases],
             updates=[r.updates for r in replications])
        nursery.cancel_scope.cancel()
    for store, base in opened:
        await base.close()
        store.close()


async def _poll(predicate: Any) -> None:
    """Wait until ``await predicate()`` holds (checked every 2 ms: the replication loops run
    meanwhile; a figure can be at most that much late). Polling on purpose: the predicate spans
    three bases, and no single event says when any of them changed."""
    while not await predicate():  # noqa: ASYNC110
        await trio.sleep(0.002)


async def _all_indexers(bases: list[Autobase[Bee]]) -> bool:
    return all(b.is_indexer and len(b.indexers) == 3 for b in bases)


async def _endpoint(
    replication: BaseReplication, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    replicator = replication.replicator
    async with open_endpoint(
        crypto.key_pair(), protocols=replicator.protocols, on_connection=replicator.replicate
    ) as endpoint, trio.open_nursery() as nursery:
        await nursery.start(replication.run)
        task_status.started(endpoint)
        await trio.sleep_forever()


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
        if args.scenario in ("live", "all"):
            await three_indexers_live(root, args.n, args.chunk)
        emit("peak_rss_mib", value=round(rss_mib()))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
