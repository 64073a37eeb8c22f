"""Replication for an Autobase: keep a ``Replicator`` in step with a base.

The base works at the store level (its writers' oplogs are logs of its store), so replicating
a base is replicating its store, plus three duties this loop takes on:

* logs the base opens later (a writer added by ``apply``) start replicating on every live
  connection (``Replicator.add``);
* whenever a peer's data was stored, the base runs ``update()`` (and ``wakeup()`` for
  ``flush`` waiters), which may append acks; before it the loop lets arrivals already under
  way land (a few scheduler passes, ``_settle``), so one update takes in a burst of blocks
  rather than running once per block;
* the base's own writable logs are announced after each update (only those whose length or
  fork moved: ``Replicator.announce_if_changed``), so peers learn of acks;
  appends go through ``BaseReplication.append`` (or call ``track`` after ``base.append``) so
  they, and writers they add, reach the peers at once;
* an indexer holding checkpoint signatures that no node carries yet publishes them in an ack
  of its own once its peers went quiet for ``publish_delay`` (20-50 ms: certificates form
  right after a burst), at most once per ``publish_interval`` (0.25 s), so a slow trickle of
  writes does not cost an extra ack per write and indexer.

Run it next to the connections: ``nursery.start_soon(replicate_base, base, replicator)``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from ..errors import ClosedError
from ..log import Log
from ..store import Store
from .replication_trio import Replicator

SETTLE_PASSES = 8  # scheduler passes an update may wait for arrivals already under way


class ReplicatedBase(Protocol):
    store: Store
    local_log: Log

    ack_due: bool
    checkpoints_pending: bool

    def writer_keys(self) -> list[bytes]: ...

    async def update(self) -> None: ...

    async def ack(self) -> bool: ...

    async def publish_checkpoints(self) -> bool: ...

    async def wait_local_append(self, since: int) -> int: ...

    async def append(self, value: bytes | Sequence[bytes]) -> int: ...

    def wakeup(self) -> None: ...


def track(base: ReplicatedBase, replicator: Replicator, *, scan_store: bool = True) -> None:
    """Make sure every log of the base's store and every writer's oplog (opened here if the
    base has not read it yet) is replicated, and announce the local ones.

    ``scan_store=False`` skips listing the store's logs (a query) and checks only the writers'
    oplogs: once the store was scanned, a base opens new logs only for writers it adds or
    needs, which ``writer_keys`` lists (``BaseReplication`` scans once, then runs this after
    every append and update)."""
    store = base.store
    keys = set(base.writer_keys())
    if scan_store:
        keys.update(store.log_keys())
    for key in keys:
        if not replicator.has_key(key):
            replicator.add(store.get(key=key))
    for item in replicator.logs:
        if item.writable:
            replicator.announce_if_changed(item)


class BaseReplication:
    """The loop that keeps a replicator and a base in step; ``wait_for`` waits on its updates.

    Run it next to the connections: ``await nursery.start(replication.run)``.
    """

    def __init__(
        self,
        base: ReplicatedBase,
        replicator: Replicator,
        *,
        ack_delay: tuple[float, float] = (0.005, 0.03),
        publish_delay: tuple[float, float] = (0.02, 0.05),
        publish_interval: float = 0.25,
    ) -> None:
        self.base = base
        self.replicator = replicator
        self.ack_delay = ack_delay  # jitter before a due ack, so indexers' acks spread out
        # quiet time before an indexer publishes checkpoint signatures in an ack of their own
        # (under load they ride on its next node anyway), so certificates form soon after a
        # burst ends; ``publish_interval`` bounds how often such acks are spent (a trickle of
        # writes gets at most one publishing ack per interval, not one per write)
        self.publish_delay = publish_delay
        self.publish_interval = publish_interval
        self.publishes = 0  # acks appended only to publish checkpoint signatures
        self._last_publish = -float("inf")
        self.updates = 0  # base updates run by this loop
        self._updated = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: peers' data -> ``base.update()`` -> new logs and acks -> peers."""
        base, replicator = self.base, self.replicator
        track(base, replicator)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce_local_appends)
            task_status.started()
            await self._follow_peers()

    async def _announce_local_appends(self) -> None:
        """Whoever appended locally (append, an ack in update or flush), peers hear of it."""
        length = self.base.local_log.length
        while True:
            try:
                length = await self.base.wait_local_append(length)
            except ClosedError:
                return
            track(self.base, self.replicator, scan_store=False)

    async def _follow_peers(self) -> None:
        base, replicator = self.base, self.replicator
        seen = -1
        while True:
            if replicator.remote_changes != seen:
                await self._settle()
                seen = replicator.remote_changes
                await base.update()
                base.wakeup()
                track(base, replicator, scan_store=False)
                self.updates += 1
                self._updated.set()
                self._updated = trio.Event()
            if base.ack_due:
                # a due ack waits a jittered moment: data arriving meanwhile may make it moot
                with trio.move_on_after(random.uniform(*self.ack_delay)) as wait:
                    await replicator.wait_remote_change(seen)
                if wait.cancelled_caught and base.ack_due:
                    await base.ack()
                continue
            if base.checkpoints_pending:
                deadline = max(
                    trio.current_time() + random.uniform(*self.publish_delay),
                    self._last_publish + self.publish_interval,
                )
                with trio.move_on_at(deadline) as quiet:
                    await replicator.wait_remote_change(seen)
                published = quiet.cancelled_caught and await base.publish_checkpoints()
                if published:
                    self.publishes += 1
                    self._last_publish = trio.current_time()
                continue
            await replicator.wait_remote_change(seen)

    async def _settle(self) -> None:
        """Let arrivals already on their way land before an update, so one update takes in
        a burst (a block from each peer, say) instead of running once per block: a few
        scheduler passes, until two in a row stored nothing new (at most ``SETTLE_PASSES``).
        Only tasks that are ready run meanwhile; nothing waits on the network."""
        replicator = self.replicator
        quiet = 0
        for _ in range(SETTLE_PASSES):
            before = replicator.remote_changes
            await trio.lowlevel.checkpoint()
            quiet = quiet + 1 if replicator.remote_changes == before else 0
            if quiet >= 2:
                return

    async def append(self, value: bytes | Sequence[bytes]) -> int:
        """``base.append`` and send it to the peers at once (new writers included)."""
        length = await self.base.append(value)
        track(self.base, self.replicator, scan_store=False)
        return length

    async def wait_for(self, predicate: Callable[[], Awaitable[bool]]) -> None:
        """Return once ``await predicate()`` is true (re-checked after every update)."""
        while not await predicate():
            await self._updated.wait()


async def replicate_base(
    base: ReplicatedBase,
    replicator: Replicator,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``BaseReplication(base, replicator).run()``, for callers that need no waiting."""
    await BaseReplication(base, replicator).run(task_status=task_status)


__all__ = ["BaseReplication", "ReplicatedBase", "replicate_base", "track"]
