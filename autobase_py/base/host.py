"""What ``apply`` may do besides writing the view: change membership, or stop the base.

An :class:`ApplyHost` is handed to every ``apply(nodes, view, host)`` call. Its effects are
part of the deterministic applied state (membership is rolled back with the view on undo), so
the same order gives the same membership on every peer. A refused change (removing or
demoting the last indexer) is not an exception inside apply: it is recorded as a refusal, the
base reports it as an ``error`` event, and every peer refuses identically.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import ids
from .system import Membership


class ApplyNode(NamedTuple):
    """A value node as ``apply`` sees it (acks never reach apply). A named tuple: one is
    built per applied value."""

    writer: bytes
    length: int
    value: bytes


class ApplyHost:
    """Membership changes and interruption, from inside ``apply``."""

    def __init__(self, membership: Membership) -> None:
        self._membership = membership
        self.refusals: list[str] = []
        self.interrupted: str | None = None
        self.added: list[bytes] = []
        self.changed = False  # did any call change the membership?

    @property
    def membership(self) -> Membership:
        return self._membership

    def _key(self, key: bytes | str) -> bytes:
        return ids.normalize(key)

    def add_writer(self, key: bytes | str, *, indexer: bool = True) -> None:
        """Add a writer (or change its role); an indexer change acts once confirmed."""
        k = self._key(key)
        before = self._membership.writers.get(k)
        refusal = self._membership.add(k, indexer=indexer)
        if refusal is not None:
            self.refusals.append(f"{refusal} ({ids.encode(k)})")
            return
        self.changed = self.changed or before != indexer
        if k not in self.added:
            self.added.append(k)

    def remove_writer(self, key: bytes | str) -> None:
        """Remove a writer; removing the last indexer is refused."""
        k = self._key(key)
        present = self._membership.is_writer(k)
        refusal = self._membership.remove(k)
        if refusal is not None:
            self.refusals.append(f"{refusal} ({ids.encode(k)})")
        elif present:
            self.changed = True

    def ack_writer(self, key: bytes | str) -> None:
        """Acknowledge ``key`` as a writer: adds it as a non-indexer if it is not one yet."""
        k = self._key(key)
        if not self._membership.is_writer(k):
            self.add_writer(k, indexer=False)

    def is_writer(self, key: bytes | str) -> bool:
        return self._membership.is_writer(self._key(key))

    def is_indexer(self, key: bytes | str) -> bool:
        return self._membership.is_indexer(self._key(key))

    def interrupt(self, reason: str) -> None:
        """Stop the base after this apply call; nothing of the current cycle is committed."""
        if self.interrupted is None:
            self.interrupted = reason or "interrupted"


__all__ = ["ApplyHost", "ApplyNode"]
