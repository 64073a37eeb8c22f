"""Child process for the base crash test: appends forever, printing each acknowledged value."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autobase_py.base.core import Autobase
from autobase_py.store import Store
from autobase_py.testing import kv


async def main(path: str, start: int) -> None:
    store = Store.open(path)
    base = await Autobase.open(store, apply=kv.apply, open_view=kv.open_view)
    print(f"ready {base.applied_length}", flush=True)
    i = start
    while True:
        size = 1 + i % 3
        await base.append([kv.put(b"k%d" % (i + j), b"v%d" % (i + j)) for j in range(size)])
        print(f"acked {i + size - 1}", flush=True)
        i += size


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
