"""What a bee needs from its log, and the pluggable block source of a sparse replica.

A bee reads and writes through :class:`BeeLog`, the few synchronous methods of
``autobase_py.log.Log`` it uses (a structural protocol, so any object with these methods works).

A bee over a *replica* log (``log.writable`` is False) may hold only some blocks. When a lookup
needs a block the replica lacks, the bee calls its :class:`BlockSource` with the block index and
the replica's current length; the source returns a proof from the writer (for example
``writer_log.proof(index)`` fetched over the network); the bee hands it to
``log.apply_proof``, which verifies the block and its Merkle path against the replica's signed
tree before storing anything, and raises a :class:`~autobase_py.errors.VerificationError`
(subclass) for a tampered block or proof. Only then does the bee read the block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class BeeLog(Protocol):
    """The part of ``autobase_py.log.Log`` a bee uses."""

    @property
    def writable(self) -> bool: ...

    @property
    def length(self) -> int: ...

    @property
    def fork(self) -> int: ...

    def append(self, blocks: Sequence[bytes]) -> int: ...

    def get(self, index: int) -> bytes: ...

    def has(self, index: int) -> bool: ...

    def tree_hash(self, length: int | None = None) -> bytes: ...

    def apply_proof(self, proof: Any) -> None: ...


class BlockSource(Protocol):
    """Fetches a proof for block ``index`` of a replica whose verified length is ``length``."""

    async def __call__(self, index: int, length: int) -> Any: ...


__all__ = ["BeeLog", "BlockSource"]
