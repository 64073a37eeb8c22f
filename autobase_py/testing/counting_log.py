"""A real log wrapped to count its block reads (how many blocks a bee operation touches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..log import Log


class CountingLog:
    """Passes everything through to ``inner``; ``reads`` counts ``get`` calls."""

    def __init__(self, log: Log) -> None:
        self.inner = log
        self.reads = 0

    @property
    def writable(self) -> bool:
        return self.inner.writable

    @property
    def length(self) -> int:
        return self.inner.length

    @property
    def fork(self) -> int:
        return self.inner.fork

    def append(self, blocks: Sequence[bytes]) -> int:
        return self.inner.append(blocks)

    def get(self, index: int) -> bytes:
        self.reads += 1
        return self.inner.get(index)

    def has(self, index: int) -> bool:
        return self.inner.has(index)

    def tree_hash(self, length: int | None = None) -> bytes:
        return self.inner.tree_hash(length)

    def apply_proof(self, proof: Any) -> None:
        self.inner.apply_proof(proof)


__all__ = ["CountingLog"]
