"""In-process replication for tests: copy logs between stores by passing real proofs.

The boundary is the same one network replication uses: a *store* knows some logs (its own and
the replicas its base opened); syncing two stores copies, for every log both know, whatever
one has beyond the other, as proofs that the receiver verifies before storing: one range
proof per run of consecutive blocks (``Log.range_proof`` / ``Log.apply_range``), the first
carrying the upgrade to the sender's length. Bases then pick the new blocks up in
``update()``. Nothing here touches a base's internals, so a test that passes through this
helper exercises the same paths as a networked node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..log import Log
from ..store import Store


class _Base(Protocol):
    store: Store

    async def update(self) -> None: ...

    async def publish_checkpoints(self) -> bool: ...


def sync_log(src: Log, dst: Log) -> int:
    """Copy blocks ``src`` has beyond ``dst`` (verified on arrival); returns blocks copied."""
    if dst.writable or src.signature is None or src.length <= dst.length:
        return 0
    if dst.length and src.fork != dst.fork:
        return 0  # oplogs never truncate; views are not synced this way
    start = dst.length
    if src.writable:  # a writer holds every block
        runs: list[tuple[int, int]] = [(start, src.length)]
    else:
        runs = []
        for index in range(start, src.length):
            if not src.has(index):
                continue
            if runs and runs[-1][1] == index:
                runs[-1] = (runs[-1][0], index + 1)
            else:
                runs.append((index, index + 1))
    copied = 0
    for first, end in runs:
        upgrade = dst.length if dst.length < src.length else None
        dst.apply_range(src.range_proof(first, end, upgrade_from=upgrade))
        copied += end - first
    if dst.length < src.length:  # src lacks the last blocks: still take the new length
        dst.apply_proof(src.proof(None, upgrade_from=dst.length))
    return copied


def sync_stores(a: Store, b: Store) -> int:
    """Sync every log both stores know, in both directions."""
    return sync_group([a, b])


def sync_group(stores: Sequence[Store]) -> int:
    """Bring every store of a connected group up to date with the others.

    Each store receives, in one transaction (as a network session batches what it receives),
    from every other store in turn; a store that received first then passes on what it got, so
    one pass spreads every block to every store."""
    keys = [set(store.log_keys()) for store in stores]
    copied = 0
    for i, dst in enumerate(stores):
        with dst.storage.transaction():
            for j, src in enumerate(stores):
                if i != j:
                    for key in sorted(keys[i] & keys[j]):
                        copied += sync_log(src.get(key=key), dst.get(key=key))
    return copied


async def sync(*bases: _Base, update: bool = True) -> int:
    """Sync all stores of ``bases`` (a connected group), then update each base."""
    copied = sync_group([base.store for base in bases])
    if update:
        for base in bases:
            await base.update()
    return copied


async def publish_all(bases: Sequence[_Base]) -> bool:
    """Let every base publish checkpoint signatures it holds (an ack carrying them)."""
    published = False
    for base in bases:
        published = await base.publish_checkpoints() or published
    return published


def _lengths(bases: Sequence[_Base]) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    for base in bases:
        for key in sorted(base.store.log_keys()):
            out.append((key, base.store.get(key=key).length))
    return out


async def converge(bases: Sequence[_Base], *, max_rounds: int = 200) -> int:
    """Sync and update until nothing changes (checkpoint acks included); returns rounds used."""
    published = False
    for rounds in range(1, max_rounds + 1):
        before = _lengths(bases)
        await sync(*bases)
        await sync(*bases)
        if _lengths(bases) == before:
            if published:
                return rounds
            published = True
            await publish_all(bases)
        else:
            published = False
    raise AssertionError(f"bases did not converge within {max_rounds} rounds")


__all__ = ["converge", "publish_all", "sync", "sync_group", "sync_log", "sync_stores"]
