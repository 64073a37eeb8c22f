"""Reading a base's view from another task while a cycle runs.

A cycle spans awaits (the bee yields once per flush), so a plain read in between may see the
view half-applied; ``base.reading()`` holds cycles off and shows what the last one committed.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from autobase_py.base.core import Autobase
from autobase_py.base.host import ApplyHost, ApplyNode
from autobase_py.bee import Bee
from autobase_py.store import Store


async def test_reading_waits_for_the_running_cycle(tmp_path: Path) -> None:
    in_apply, gate = trio.Event(), trio.Event()

    async def apply(nodes: list[ApplyNode], view: Bee, host: ApplyHost) -> None:
        for node in nodes:
            batch = view.batch()
            batch.put(node.value, node.value)
            await batch.flush()
            if node.value == b"b":  # stop half-way through the batch until the test says
                in_apply.set()
                await gate.wait()

    store = Store.open(tmp_path / "s")
    base: Autobase[Bee] = await Autobase.open(store, apply=apply, open_view=Bee)
    seen: list[tuple[bytes | None, bytes | None]] = []

    async def reader() -> None:
        async with base.reading() as view:
            seen.append((await view.get(b"b"), await view.get(b"c")))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(base.append, [b"a", b"b", b"c"])
            await in_apply.wait()
            try:  # the cycle is shielded from cancellation: always let it finish
                # the hazard: a plain read now sees the batch half-applied
                assert await base.view.get(b"b") == b"b"
                assert await base.view.get(b"c") is None
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                assert seen == []  # held off while the cycle runs
            finally:
                gate.set()
    assert seen == [(b"b", b"c")]
    assert base.applied_length == 3
    await base.close()
    store.close()
