"""Child process for the bee crash test: flush deterministic batches forever, printing
``flushed <n> <version>`` after each flush returns. The parent kills it with SIGKILL."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from autobase_py.bee import Bee
from autobase_py.store import Store

SEED = bytes(range(32))
KEYSPACE = 3000


def batch_ops(n: int) -> list[tuple[bytes, bytes | None]]:
    """The operations of flush number ``n`` (puts and a few deletes, spread over the keys)."""
    ops: list[tuple[bytes, bytes | None]] = []
    for j in range(60):
        ops.append((b"key-%05d" % ((n * 37 + j * 101) % KEYSPACE), b"value %d/%d" % (n, j)))
    for j in range(6):
        ops.append((b"key-%05d" % ((n * 53 + j * 7) % KEYSPACE), None))
    return ops


def model_after(flushes: int) -> dict[bytes, bytes]:
    model: dict[bytes, bytes] = {}
    for n in range(flushes):
        for key, value in batch_ops(n):
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
    return model


async def main(folder: str) -> None:
    store = Store.open(folder, primary_seed=SEED)
    bee = Bee(store.get(name="view"), leaf_max=8, internal_max=8, pack_bytes=1024)
    n = 0
    while True:
        batch = bee.batch()
        for key, value in batch_ops(n):
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        version = await batch.flush()
        n += 1
        print(f"flushed {n} {version}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
