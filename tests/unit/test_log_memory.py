"""A log of 100,000 blocks keeps its blocks and nodes on disk, not in Python memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from autobase_py import crypto
from autobase_py.log import Log
from autobase_py.storage import Storage


def test_100k_blocks_do_not_stay_in_memory(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path)
    log = Log.create(storage, crypto.key_pair(bytes(32)))
    tracemalloc.start()
    try:
        with storage.transaction():
            for i in range(1000):
                log.append([bytes([i % 256]) * 100] * 100)  # 10 MB of blocks in total
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert log.length == 100_000 and log.byte_length == 10_000_000
    assert current < 1_000_000  # Python keeps the header and ~17 roots, not 10 MB
    assert log.get(99_999) == bytes([999 % 256]) * 100
    storage.close()
