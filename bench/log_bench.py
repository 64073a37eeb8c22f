"""Benchmark the signed log: durable appends, proof generation and verification, a replica
storing ranges (``apply_range``) against one proof per block, and the machine's own limits
(ed25519 sign/verify, BLAKE2b-256 on 100 bytes, fsync) measured by the same script so the
log's figures can be read against them; and the WAL frames (dirty pages) a commit writes for
the base's shapes of appends.

Run from the repo root: ``.venv/bin/python bench/log_bench.py [--quick]``. Prints one JSON
object per line. Storage folders are created next to the repo (same disk), then removed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from autobase_py import crypto  # noqa: E402
from autobase_py.log import Log, Proof, RangeProof  # noqa: E402
from autobase_py.storage import Storage  # noqa: E402

QUICK = "--quick" in sys.argv
BLOCK = b"x" * 100


def emit(bench: str, figure: str, value: float, unit: str, **params: object) -> None:
    value = round(value, 2 if value < 100 else 1)
    print(json.dumps({"bench": bench, "figure": figure, "value": value, "unit": unit,
                      **params}), flush=True)


def rate(count: int, fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def machine_limits(folder: Path) -> None:
    kp = crypto.key_pair(bytes(32))
    message = bytes(112)
    n = 2000 if QUICK else 10000
    emit("machine", "ed25519_sign", rate(n, lambda: [crypto.sign(message, kp.secret_key)
                                                   for _ in range(n)]), "ops/s")
    signature = crypto.sign(message, kp.secret_key)
    emit("machine", "ed25519_verify", rate(n, lambda: [crypto.verify(message, signature,
                                                                     kp.public_key)
                                                       for _ in range(n)]), "ops/s")
    m = 100_000 if QUICK else 500_000
    emit("machine", "blake2b256_100B", rate(m, lambda: [hashlib.blake2b(BLOCK, digest_size=32)
                                                        .digest() for _ in range(m)]), "ops/s")
    path = folder / "fsync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    f = 200 if QUICK else 1000

    def fsyncs() -> None:
        for _ in range(f):
            os.write(fd, BLOCK)
            os.fsync(fd)

    emit("machine", "fsync_after_100B_write", rate(f, fsyncs), "ops/s")
    os.close(fd)


def appends(folder: Path) -> None:
    for per_call, calls in ((1, 300 if QUICK else 2000), (100, 100 if QUICK else 600)):
        storage = Storage.open(folder / f"append{per_call}")
        log = Log.create(storage, crypto.key_pair(bytes([per_call]) * 32))
        batch = [BLOCK] * per_call

        def run(log: Log = log, batch: list[bytes] = batch, calls: int = calls) -> None:
            for _ in range(calls):
                log.append(batch)

        blocks = rate(calls * per_call, run)
        emit("log", "durable_append", blocks, "blocks/s", blocks_per_call=per_call,
             block_bytes=100, calls=calls, commit="one per call, synchronous=FULL")
        storage.close()
    # group commit: 10 append calls of 100 blocks inside one transaction
    storage = Storage.open(folder / "group")
    log = Log.create(storage, crypto.key_pair(bytes([7]) * 32))
    groups = 30 if QUICK else 100

    def grouped() -> None:
        for _ in range(groups):
            with storage.transaction():
                for _ in range(10):
                    log.append([BLOCK] * 100)

    emit("log", "durable_append", rate(groups * 1000, grouped), "blocks/s",
         blocks_per_call=100, block_bytes=100, calls=groups * 10,
         commit="one per 10 calls (group commit)")
    storage.close()


def wal_frames(folder: Path) -> None:
    """Dirty pages per commit (WAL frames: the WAL's growth with checkpoints off) and CPU per
    commit (no fsync), for an oplog append alone and beside a view append (the base's cycle),
    with and without a truncation of the view (the base's undo). A commit's own CPU is about
    proportional to its frames."""
    frame = 4096 + 24
    n = 300 if QUICK else 2000
    for kind in ("oplog 1 block", "oplog 100 blocks", "oplog 1 + view 1 of 2 KiB",
                 "oplog 1 + view truncate 1 + append 2 of 2 KiB"):
        path = folder / f"wal-{len(kind)}"
        storage = Storage.open(path, fsync=False)
        storage.db.execute("PRAGMA wal_autocheckpoint=0")
        oplog = Log.create(storage, crypto.key_pair(bytes([21]) * 32))
        view = Log.create(storage, crypto.key_pair(bytes([22]) * 32))
        view.signed_appends = False
        per = 100 if kind == "oplog 100 blocks" else 1

        def cycle(oplog: Log = oplog, view: Log = view, kind: str = kind, per: int = per,
                  storage: Storage = storage) -> None:
            with storage.transaction():
                oplog.append([b"o" * 365] * per)
                if "truncate" in kind and view.length:
                    view.truncate(view.length - 1)
                    view.append([b"v" * 2048] * 2)
                elif "view" in kind:
                    view.append([b"v" * 2048])

        for _ in range(200):
            cycle()
        wal = path / "db.sqlite-wal"
        start = wal.stat().st_size
        cpu = time.process_time()
        for _ in range(n):
            cycle()
        cpu = time.process_time() - cpu
        emit("log", "wal_frames_per_commit", (wal.stat().st_size - start) / frame / n, "frames",
             kind=kind, commits=n)
        emit("log", "cpu_per_commit", cpu / n * 1e6, "us", kind=kind, commits=n,
             fsync=False)
        storage.close()


def proofs(folder: Path) -> None:
    length = 10_000 if QUICK else 100_000
    storage = Storage.open(folder / "proofs")
    writer = Log.create(storage, crypto.key_pair(bytes([9]) * 32))
    with storage.transaction():
        for _ in range(length // 100):
            writer.append([BLOCK] * 100)
    rng = random.Random(1)
    n = 2000 if QUICK else 10000
    indices = [rng.randrange(length) for _ in range(n)]
    emit("log", "proof_generation", rate(n, lambda: [writer.proof(i) for i in indices]),
         "proofs/s", kind="block only", length=length)
    emit("log", "proof_generation", rate(n, lambda: [writer.proof(i, upgrade_from=0)
                                                     for i in indices]),
         "proofs/s", kind="block + upgrade from 0", length=length)
    block_proofs = [writer.proof(i) for i in indices]
    full = [writer.proof(i, upgrade_from=0) for i in indices[:200]]
    rstorage = Storage.open(folder / "replica")
    replica = Log.replica(rstorage, writer.key)
    replica.apply_proof(full[0])

    def verify_blocks() -> None:
        with rstorage.transaction():
            for p in block_proofs:
                replica.apply_proof(p)

    emit("log", "proof_verification", rate(n, verify_blocks), "proofs/s",
         kind="block only, stored on the replica (one commit)", length=length)

    def verify_full() -> None:
        for p in full:
            fresh = Log.replica(Storage.open_memory(), writer.key)
            fresh.apply_proof(p)

    emit("log", "proof_verification", rate(len(full), verify_full), "proofs/s",
         kind="block + upgrade from 0 on a fresh in-memory replica (signature checked)",
         length=length)
    rstorage.close()
    storage.close()


def ranges(folder: Path) -> None:
    """A replica storing a contiguous stretch it was sent: one block-only proof per block
    (``apply_proof``) against range proofs of ``size`` blocks (``apply_range``), proofs built
    beforehand, everything in one commit; and as ``sync_log`` moves 100 appended blocks: one
    upgrade plus 100 block proofs against one range proof carrying the upgrade."""
    length = 10_000 if QUICK else 100_000
    storage = Storage.open(folder / "ranges")
    writer = Log.create(storage, crypto.key_pair(bytes([11]) * 32))
    with storage.transaction():
        for _ in range(length // 100):
            writer.append([BLOCK] * 100)
    per_block = [writer.proof(i) for i in range(length)]
    rstorage = Storage.open(folder / "ranges-blocks")
    replica = Log.replica(rstorage, writer.key)
    replica.apply_proof(writer.proof(None, upgrade_from=0))

    def blocks() -> None:
        with rstorage.transaction():
            for p in per_block:
                replica.apply_proof(p)

    emit("log", "replica_apply", rate(length, blocks), "blocks/s",
         kind="one block-only proof per block (apply_proof), one commit", length=length)
    rstorage.close()
    for size in (128, 1024):
        proofs = [writer.range_proof(i, min(i + size, length)) for i in range(0, length, size)]
        rstorage = Storage.open(folder / f"ranges-{size}")
        replica = Log.replica(rstorage, writer.key)
        replica.apply_proof(writer.proof(None, upgrade_from=0))

        def ranged(replica: Log = replica, proofs: list[RangeProof] = proofs,
                   rstorage: Storage = rstorage) -> None:
            with rstorage.transaction():
                for p in proofs:
                    replica.apply_range(p)

        emit("log", "replica_apply", rate(length, ranged), "blocks/s",
             kind=f"range proofs of {size} blocks (apply_range), one commit", length=length)
        rstorage.close()
    storage.close()
    # sync_log's shape: the writer appends 100 blocks, the replica catches up, repeat
    rounds = 50 if QUICK else 300
    for kind in ("per-block", "range"):
        storage = Storage.open(folder / f"sync-{kind}")
        writer = Log.create(storage, crypto.key_pair(bytes([12]) * 32))
        writer.durable_appends = False
        rstorage = Storage.open(folder / f"sync-{kind}-replica")
        replica = Log.replica(rstorage, writer.key)
        moves: list[list[Proof] | RangeProof] = []
        for _ in range(rounds):
            start = writer.length
            writer.append([BLOCK] * 100)
            if kind == "range":
                moves.append(writer.range_proof(start, writer.length, upgrade_from=start))
            else:
                moves.append([writer.proof(start, upgrade_from=start)]
                             + [writer.proof(i) for i in range(start + 1, writer.length)])

        def catch_up(replica: Log = replica, moves: list[list[Proof] | RangeProof] = moves,
                     rstorage: Storage = rstorage) -> None:
            for move in moves:
                with rstorage.transaction():
                    if isinstance(move, RangeProof):
                        replica.apply_range(move)
                    else:
                        for p in move:
                            replica.apply_proof(p)

        emit("log", "replica_catch_up", rate(rounds * 100, catch_up), "blocks/s",
             kind=f"{kind}: 100 new blocks with the upgrade (signature checked), one commit each",
             rounds=rounds)
        rstorage.close()
        storage.close()


def main() -> None:
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-") as tmp:
        folder = Path(tmp)
        machine_limits(folder)
        appends(folder)
        wal_frames(folder)
        proofs(folder)
        ranges(folder)


if __name__ == "__main__":
    main()
