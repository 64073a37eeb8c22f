"""Child process for the crash and lock tests (run as a script, not collected by pytest).

``append DIR BATCH``: open the store in DIR, append BATCH blocks per transaction to the log
named "crash" forever, recording the new length in a record in the same transaction, and print
each acknowledged (committed) length on its own line.
``hold DIR``: open the storage in DIR, print "locked", and keep it open until stdin closes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autobase_py.storage import Storage
from autobase_py.store import Store


def block(index: int) -> bytes:
    return b"block %d " % index + bytes([index % 251]) * (index % 17)


def append_forever(folder: str, batch: int) -> None:
    store = Store.open(folder)
    log = store.get(name="crash")
    out = sys.stdout
    while True:
        with store.storage.transaction():
            length = log.append([block(log.length + i) for i in range(batch)])
            store.storage.put(b"test/acked", b"%d" % length)
        out.write(f"{length}\n")
        out.flush()


def hold(folder: str) -> None:
    storage = Storage.open(folder)
    print("locked", flush=True)
    sys.stdin.read()
    storage.close()


if __name__ == "__main__":
    if sys.argv[1] == "append":
        append_forever(sys.argv[2], int(sys.argv[3]))
    else:
        hold(sys.argv[2])
