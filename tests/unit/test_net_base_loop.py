"""The base replication loop's publishing policy, on a virtual clock with stand-in parts.

An indexer holding checkpoint signatures that no node carries publishes them in an ack once
its peers are quiet for ``publish_delay``, and at most once per ``publish_interval``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

from autobase_py.net.base_trio import BaseReplication


class FakeStore:
    def log_keys(self) -> list[bytes]:
        return []


class FakeReplicator:
    """What the loop uses of a Replicator: a counter of stored remote data to wait on."""

    def __init__(self) -> None:
        self.remote_changes = 0
        self._changed = trio.Event()
        self.logs: list[Any] = []

    def has_key(self, key: bytes) -> bool:
        return True

    def announce_if_changed(self, item: Any) -> None:
        pass

    def remote_change(self) -> None:
        self.remote_changes += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_remote_change(self, since: int) -> int:
        while self.remote_changes <= since:
            await self._changed.wait()
        return self.remote_changes


class FakeLog:
    length = 0


class FakeBase:
    """Signs a checkpoint whenever ``update`` takes in remote data (``sign_on_update``)."""

    def __init__(self) -> None:
        self.store = FakeStore()
        self.local_log = FakeLog()
        self.ack_due = False
        self.checkpoints_pending = False
        self.sign_on_update = False
        self.published_at: list[float] = []
        self.published = trio.Event()  # set by the next publish

    def writer_keys(self) -> list[bytes]:
        return []

    async def update(self) -> None:
        if self.sign_on_update:
            self.checkpoints_pending = True

    async def ack(self) -> bool:
        raise AssertionError("no ack is due in these tests")

    async def publish_checkpoints(self) -> bool:
        if not self.checkpoints_pending:
            return False
        self.checkpoints_pending = False
        self.published_at.append(trio.current_time())
        self.published.set()
        self.published = trio.Event()
        return True

    async def wait_local_append(self, since: int) -> int:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def append(self, value: bytes | Sequence[bytes]) -> int:
        raise AssertionError("not used")

    def wakeup(self) -> None:
        pass


async def _run_loop(base: FakeBase, replicator: FakeReplicator, script: Any) -> BaseReplication:
    replication = BaseReplication(base, replicator)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(replication.run)
        await script()
        nursery.cancel_scope.cancel()
    return replication


async def advance(clock: trio.testing.MockClock, seconds: float) -> None:
    """Let every task react to what just happened, then move the virtual clock on and let
    every task that this wakes run until all wait again."""
    await trio.testing.wait_all_tasks_blocked()
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


def test_publishes_soon_after_the_peers_go_quiet() -> None:
    async def main() -> None:
        base, replicator = FakeBase(), FakeReplicator()
        base.sign_on_update = True

        async def script() -> None:
            replicator.remote_change()  # data arrives: update signs a checkpoint
            start = trio.current_time()
            await base.published.wait()  # the virtual clock jumps to the loop's deadline
            waited = base.published_at[0] - start
            assert 0.02 <= waited <= 0.05 + 1e-9, waited

        replication = await _run_loop(base, replicator, script)
        assert replication.publishes == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_busy_peers_postpone_publishing() -> None:
    """Data arriving every 10 ms keeps the loop from publishing (the signatures would ride
    on the next node anyway); it publishes once the arrivals stop."""
    clock = trio.testing.MockClock()

    async def main() -> None:
        base, replicator = FakeBase(), FakeReplicator()
        base.sign_on_update = True

        async def script() -> None:
            for _ in range(30):
                replicator.remote_change()
                await advance(clock, 0.01)
            stopped = trio.current_time()
            assert base.published_at == []
            clock.autojump_threshold = 0  # from now on, time passes whenever all tasks wait
            await base.published.wait()
            assert len(base.published_at) == 1
            assert base.published_at[0] >= stopped

        await _run_loop(base, replicator, script)

    trio.run(main, clock=clock)


def test_a_trickle_of_writes_publishes_at_most_once_per_interval() -> None:
    """One remote write every 100 ms, each leaving a signature to publish: the loop publishes
    at most once per ``publish_interval`` (0.25 s), not once per write."""
    clock = trio.testing.MockClock()

    async def main() -> None:
        base, replicator = FakeBase(), FakeReplicator()
        base.sign_on_update = True

        async def script() -> None:
            for _ in range(20):  # 2 seconds of writes
                replicator.remote_change()
                await advance(clock, 0.1)
            clock.autojump_threshold = 0
            while base.checkpoints_pending:  # the last signature gets published too
                await base.published.wait()

        replication = await _run_loop(base, replicator, script)
        times = base.published_at
        assert 2 <= len(times) <= 2.0 / replication.publish_interval + 2, times
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= replication.publish_interval - 1e-9 for gap in gaps), gaps
        assert not base.checkpoints_pending  # the last signature was published too

    trio.run(main, clock=clock)
