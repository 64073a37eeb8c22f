"""The fair per-storage write lock that lets writers holding a transaction across awaits (a
base's apply cycle) and other writers of the same storage (replication) take turns."""

from __future__ import annotations

from pathlib import Path

import trio

from autobase_py.storage import Storage
from autobase_py.storage_trio import write_lock


async def test_a_waiting_writer_gets_the_next_turn_even_against_back_to_back_cycles(
    tmp_path: Path,
) -> None:
    storage = Storage.open(tmp_path)
    assert write_lock(storage) is write_lock(storage)
    turns: list[str] = []
    asked_at: list[int] = []

    async def cycles() -> None:
        for i in range(40):
            async with write_lock(storage):
                with storage.transaction():
                    storage.put(b"cycle %d" % i, b"x")
                    for _ in range(3):  # a cycle awaits inside its transaction
                        await trio.lowlevel.checkpoint()
                turns.append("cycle")

    async def other() -> None:
        while len(turns) < 5:
            await trio.lowlevel.checkpoint()
        asked_at.append(len(turns))
        async with write_lock(storage):
            assert not storage.in_transaction  # never inside someone else's
            with storage.transaction():
                storage.put(b"other", b"y")
            turns.append("other")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cycles)
        nursery.start_soon(other)
    # it went right after the cycle running when it asked, not after the ~35 that followed
    assert turns.index("other") == asked_at[0] + 1 and turns.count("cycle") == 40
    assert storage.get(b"other") == b"y"
    storage.close()
