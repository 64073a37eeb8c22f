"""Benchmark the canonical encoding of the records the base writes and reads per append.

Per-call CPU microseconds (best of 5 repeats of a timed loop, ``time.process_time``) for:

- ``encode_block`` / ``decode_block`` of oplog blocks shaped like the base's own: a single
  writer's value (no heads, a 139-byte record), the first node of a 100-value batch carrying
  a checkpoint signature, a three-indexer node (two heads, a value) and an ack;
- ``CheckpointSignature.to_wire`` / ``from_wire``;
- ``encoding.encode_trusted`` and ``encoding.decode`` of the records a real base persists,
  caught on their way to ``encode_trusted`` while a short run of ``base_bench``'s workloads
  goes (single writer, then three indexers): the base state (``_persist``), the certificate
  (``write_records``), the round steps (``save``) and the tip records (``_write_tip``);
  each figure is the mean over up to 200 records from the second half of the run.

Run from the repo root: ``.venv/bin/python bench/encoding_bench.py``. Prints one JSON object
per line.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from autobase_py import crypto, encoding  # noqa: E402
from autobase_py.base.checkpoint import Checkpoint, CheckpointSignature  # noqa: E402
from autobase_py.base.oplog import OplogBlock, decode_block, encode_block  # noqa: E402

REPEATS = 5


def emit(figure: str, us: float, **params: object) -> None:
    print(json.dumps({"bench": "encoding", "figure": figure, "us_per_call": round(us, 3),
                      **params}), flush=True)


def per_call(fn: Callable[[], object], loops: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.process_time()
        for _ in range(loops):
            fn()
        best = min(best, time.process_time() - start)
    return best / loops * 1e6


def record(i: int) -> bytes:
    return json.dumps(
        {"name": f"model-{i:08d}", "driveKey": f"{i:064x}", "type": "text-generation",
         "description": "a test model"}, separators=(",", ":")).encode()


def blocks() -> dict[str, OplogBlock]:
    kp = crypto.key_pair(b"\x05" * 32)
    cp = Checkpoint(b"\x01" * 32, 0, 12_345, 12_345, b"\x07" * 32, b"\x08" * 32)
    sig = CheckpointSignature.create(cp, kp)
    heads = ((b"\x02" * 32, 4_101), (b"\x03" * 32, 4_099))
    return {
        "single_value": OplogBlock(heads=(), batch=1, value=record(4_100)),
        "batch_first_with_ckpt": OplogBlock(heads=(), batch=100, value=record(1),
                                            checkpoints=(sig,)),
        "three_indexer_value": OplogBlock(heads=heads, batch=1, value=record(2)),
        "ack": OplogBlock(heads=heads),
    }


async def capture_records(root: Path) -> dict[str, list[Any]]:
    """The objects a real base hands to ``encode_trusted``, by scenario and calling function."""
    import base_bench

    seen: dict[str, list[Any]] = defaultdict(list)
    real = encoding.encode_trusted
    scenario = ["a_single_writer"]

    def catching(obj: Any) -> bytes:
        # the calling function (around a generator expression): Autobase._persist, ...
        caller = sys._getframe(1).f_code.co_qualname.split(".<locals>")[0]
        if caller != "encode_block":  # measured on its own above
            seen[f"{scenario[0]}:{caller}"].append(obj)
        return real(obj)

    base_bench.SETTINGS["fsync"] = False
    encoding.encode_trusted = catching  # type: ignore[assignment]
    try:
        await base_bench.single_writer(root, 400, 1)
        scenario[0] = "b_three_indexers"
        await base_bench.three_indexers(root, 300, 1)
    finally:
        encoding.encode_trusted = real  # type: ignore[assignment]
    return seen


def main() -> None:
    for name, block in blocks().items():
        data = encode_block(block)
        assert decode_block(data) == block
        emit("encode_block", per_call(lambda b=block: encode_block(b), 20_000), block=name,
             bytes=len(data))
        emit("decode_block", per_call(lambda d=data: decode_block(d), 20_000), block=name,
             bytes=len(data))
    sig = blocks()["batch_first_with_ckpt"].checkpoints[0]
    wire = sig.to_wire()
    emit("checkpoint_signature_to_wire", per_call(sig.to_wire, 50_000))
    emit("checkpoint_signature_from_wire",
         per_call(lambda: CheckpointSignature.from_wire(wire), 50_000))

    root = Path(tempfile.mkdtemp(prefix=".bench-encoding-", dir=ROOT))
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # base_bench's own figures
            seen = trio.run(capture_records, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for caller in sorted(seen):
        objs = seen[caller]
        sample = objs[len(objs) // 2 :][:200]  # steady state, not the first cycles
        datas = [encoding.encode_trusted(o) for o in sample]
        size = sum(map(len, datas)) / len(datas)
        loops = max(1, 4_000 // len(sample))

        def enc(sample: list[Any] = sample) -> None:
            for o in sample:
                encoding.encode_trusted(o)

        def dec(datas: list[bytes] = datas) -> None:
            for d in datas:
                encoding.decode(d)

        n = len(sample)
        emit("encode_trusted", per_call(enc, loops) / n, record=caller, avg_bytes=round(size))
        emit("decode", per_call(dec, loops) / n, record=caller, avg_bytes=round(size))


if __name__ == "__main__":
    main()
