"""Linearizer benchmark: nodes/s, peak memory, cost per node at 10k vs 100k, ack fraction.

Run from the repo root: ``.venv/bin/python bench/linearizer_bench.py [--quick]``.
Prints one JSON object per line.

Workload: writers append values one at a time, each naming the current DAG heads (every node
reaches everyone at once); after each node, each indexer checks ``should_ack`` with
probability ``ack_check`` (a stand-in for the base's ack jitter) and acks if it says so. The DAG
is generated once (untimed), then replayed into a fresh ``Linearizer(keep_history=False)``,
calling ``add`` and ``update`` for every node: that replay is what is timed and measured.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autobase_py.linearizer import Linearizer, Node
from autobase_py.testing.dag import writer_keys


def generate(
    total: int, writers: int, indexers: int, ack_check: float, seed: int = 1
) -> tuple[list[bytes], list[Node], int, int]:
    """A DAG of ``total`` nodes (values + acks); returns (indexers, nodes, values, acks)."""
    rng = random.Random(seed)
    keys = writer_keys(writers)
    idx = keys[:indexers]
    lin = Linearizer(idx, keep_history=False)
    nodes: list[Node] = []
    values = acks = 0

    def append(writer: bytes, value: bytes | None) -> None:
        node = Node(writer, lin.known_length(writer) + 1, tuple(lin.heads()), 1, value)
        lin.add(node)
        lin.update()
        nodes.append(node)

    while len(nodes) < total:
        append(rng.choice(keys), b"value %d" % values)
        values += 1
        for key in idx:
            if len(nodes) < total and rng.random() < ack_check and lin.should_ack(key):
                append(key, None)
                acks += 1
    # drain: ack until everything is confirmed (part of the workload)
    while any(lin.should_ack(k) for k in idx):
        for key in idx:
            if lin.should_ack(key):
                append(key, None)
                acks += 1
    return idx, nodes, values, acks


def replay(idx: list[bytes], nodes: list[Node]) -> tuple[float, Linearizer]:
    lin = Linearizer(idx, keep_history=False)
    start = time.perf_counter()
    for node in nodes:
        lin.add(node)
        lin.update()
    return time.perf_counter() - start, lin


def peak_memory(idx: list[bytes], nodes: list[Node]) -> int:
    tracemalloc.start()
    lin = Linearizer(idx, keep_history=False)
    for node in nodes:
        lin.add(node)
        lin.update()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def windowed_memory(idx: list[bytes], nodes: list[Node], window: int) -> tuple[int, int, int]:
    """Peak traced bytes of a replay with ``round_window``; rows stored; steps in memory.

    The rows go to an in-memory SQLite table (what the base would do on disk); SQLite's own
    allocations are not Python allocations, so the traced peak is the linearizer's.
    """
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE steps (epoch INT, writer BLOB, length INT, rv TEXT)")
    db.execute("CREATE INDEX steps_at ON steps (epoch, writer, length)")

    def lookup(epoch: int, writer: bytes, length: int) -> list[int]:
        row = db.execute(
            "SELECT rv FROM steps WHERE epoch = ? AND writer = ? AND length <= ?"
            " ORDER BY length DESC LIMIT 1",
            (epoch, writer, length),
        ).fetchone()
        return json.loads(row[0]) if row else [-1] * len(idx)

    lin = Linearizer(idx, keep_history=False, round_window=window, round_lookup=lookup)
    stored = 0
    tracemalloc.start()
    for i, node in enumerate(nodes):
        lin.add(node)
        lin.update()
        if i % 100 == 0:
            taken = lin.take_round_steps()
            db.executemany(
                "INSERT INTO steps VALUES (?, ?, ?, ?)",
                [(e, w, k, json.dumps(rv)) for e, w, k, rv in taken],
            )
            stored += len(taken)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, stored, lin.stats()["round_steps"]


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    quick = "--quick" in sys.argv
    big = 20_000 if quick else 100_000
    small = 2_000 if quick else 10_000
    ack_check = 0.05
    for writers, indexers in ((3, 3), (5, 3)):
        per_node: dict[int, float] = {}
        for total in (small, big):
            idx, nodes, values, acks = generate(total, writers, indexers, ack_check)
            seconds, lin = replay(idx, nodes)
            per_node[total] = seconds / len(nodes)
            params = {"writers": writers, "indexers": indexers, "nodes": len(nodes),
                      "values": values, "acks": acks, "ack_check": ack_check}
            emit(bench="linearizer", figure="throughput", value=round(len(nodes) / seconds),
                 unit="nodes/s", **params)
            emit(bench="linearizer", figure="cost_per_node", value=round(per_node[total] * 1e6, 2),
                 unit="us", **params)
            if total == big:
                emit(bench="linearizer", figure="peak_memory_traced",
                     value=round(peak_memory(idx, nodes) / 2**20, 2), unit="MiB", **params)
                peak, stored, kept = windowed_memory(idx, nodes, 64)
                emit(bench="linearizer", figure="peak_memory_traced_windowed",
                     value=round(peak / 2**20, 2), unit="MiB", round_window=64,
                     stored_rows=stored, steps_in_memory=kept, **params)
                stats = lin.stats()
                emit(bench="linearizer", figure="final_structures", value=stats["unconfirmed"],
                     unit="unconfirmed nodes", round_steps=stats["round_steps"],
                     confirmed=lin.confirmed_length, **params)
        emit(bench="linearizer", figure="cost_growth_small_to_big",
             value=round(per_node[big] / per_node[small], 3), unit="ratio",
             writers=writers, indexers=indexers, small=small, big=big)
    # ack fraction: 3 indexers, 10,000 values, indexers check should_ack after a jitter
    for check in (0.05, 0.2, 1.0):
        target = 10_000 if not quick else 2_000
        _, nodes, values, acks = generate_values(target, check)
        emit(bench="linearizer", figure="ack_fraction", value=round(acks / (acks + values), 4),
             unit="acks/nodes", values=values, acks=acks, ack_check=check, writers=3,
             indexers=3)


def generate_values(
    values_wanted: int, ack_check: float
) -> tuple[list[bytes], list[Node], int, int]:
    """Like ``generate`` but stops at a number of values rather than of nodes."""
    rng = random.Random(2)
    keys = writer_keys(3)
    lin = Linearizer(keys, keep_history=False)
    nodes: list[Node] = []
    values = acks = 0

    def append(writer: bytes, value: bytes | None) -> None:
        node = Node(writer, lin.known_length(writer) + 1, tuple(lin.heads()), 1, value)
        lin.add(node)
        lin.update()
        nodes.append(node)

    while values < values_wanted:
        append(rng.choice(keys), b"value %d" % values)
        values += 1
        for key in keys:
            if rng.random() < ack_check and lin.should_ack(key):
                append(key, None)
                acks += 1
    while any(lin.should_ack(k) for k in keys):
        for key in keys:
            if lin.should_ack(key):
                append(key, None)
                acks += 1
    assert lin.confirmed_length >= values
    return keys, nodes, values, acks


if __name__ == "__main__":
    main()
