"""The system state: who may write and who indexes, as a deterministic function of the order.

``apply`` changes membership through ``host.add_writer`` / ``host.remove_writer``; those calls
edit a :class:`Membership` that is part of the applied state, so they are rolled back with the
view on undo and replayed identically on every peer.

* A writer added by apply may append at once (its nodes are accepted into the DAG as soon as
  the op that added it is applied locally).
* Indexer changes act on the *quorum* only once the op that made them is confirmed: the base
  hands the confirmed membership's indexer set to the linearizer (see docs/consensus.md).
* The last indexer can never be removed or demoted: such a call is refused (returns a reason)
  identically on every peer, instead of raising inside apply, so a hostile writer cannot halt
  the base by asking for it.

``Membership.encode`` is canonical; ``hash`` is what checkpoints sign as the system state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import crypto, encoding
from ..errors import DecodeError

_NS = crypto.namespace("autobase_py/system", 1)[0]


@dataclass(slots=True)
class Membership:
    """Writers (key -> is_indexer) and the epoch (count of indexer-set changes)."""

    writers: dict[bytes, bool] = field(default_factory=dict)
    epoch: int = 0
    # memo of ``hash()``; ``add``/``remove`` (the only ways membership changes) clear it
    _hash: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def genesis(cls, bootstrap: bytes) -> Membership:
        return cls(writers={bootstrap: True}, epoch=0)

    def copy(self) -> Membership:
        return Membership(writers=dict(self.writers), epoch=self.epoch, _hash=self._hash)

    @property
    def indexers(self) -> tuple[bytes, ...]:
        return tuple(sorted(k for k, idx in self.writers.items() if idx))

    def is_writer(self, key: bytes) -> bool:
        return key in self.writers

    def is_indexer(self, key: bytes) -> bool:
        return self.writers.get(key, False)

    def add(self, key: bytes, *, indexer: bool) -> str | None:
        """Add or re-role a writer; returns a refusal reason or None."""
        before = self.writers.get(key)
        if before is not None and before and not indexer and len(self.indexers) == 1:
            return "refused: cannot demote the last indexer"
        self._hash = None
        self.writers[key] = indexer
        if bool(before) != indexer:
            self.epoch += 1
        return None

    def remove(self, key: bytes) -> str | None:
        """Remove a writer; returns a refusal reason or None (removing a stranger is a no-op)."""
        if key not in self.writers:
            return None
        if self.writers[key] and len(self.indexers) == 1:
            return "refused: cannot remove the last indexer"
        self._hash = None
        was_indexer = self.writers.pop(key)
        if was_indexer:
            self.epoch += 1
        return None

    def to_wire(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "writers": [[k, idx] for k, idx in sorted(self.writers.items())],
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Membership:
        m = encoding.expect_map(obj, "membership")
        epoch = encoding.field(m, "epoch", int, "membership")
        raw = encoding.field(m, "writers", list, "membership")
        writers: dict[bytes, bool] = {}
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], bytes)
                or len(item[0]) != 32
                or not isinstance(item[1], bool)
            ):
                raise DecodeError("membership: a writer must be [32-byte key, bool]")
            writers[item[0]] = item[1]
        if epoch < 0 or not any(writers.values()):
            raise DecodeError("membership: needs epoch >= 0 and at least one indexer")
        return cls(writers=writers, epoch=epoch)

    def encode(self) -> bytes:
        return encoding.encode(self.to_wire())

    def hash(self) -> bytes:
        if self._hash is None:
            self._hash = crypto.hash(_NS, self.encode())
        return self._hash


def majority(indexers: Iterable[bytes]) -> int:
    return len(tuple(indexers)) // 2 + 1


__all__ = ["Membership", "majority"]
