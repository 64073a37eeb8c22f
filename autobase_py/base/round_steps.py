"""The linearizer's round steps, stored one SQLite row per step.

The linearizer keeps, for confirmed nodes it has forgotten, a step function per writer and
indexer (``autobase_py.linearizer.rounds``): a late node naming an old head needs it. That
bookkeeping grows with the rounds of an epoch, so the base does not keep it in memory nor
rewrite it: every new step becomes one row ``base/steps/<epoch><writer><length> -> rounds``
in the cycle's transaction, the linearizer keeps only the newest ``WINDOW`` steps per writer,
and reads older ones back through :meth:`RoundStepStore.lookup` (an indexed ``floor`` query).
Restoring reads only the newest ``WINDOW`` rows per writer, so reopening is flat in history.
Rows of a finished epoch are deleted when the indexer set changes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from .. import encoding
from ..storage import Storage

_STEPS = b"base/steps/"
_BE64 = struct.Struct(">Q")
WINDOW = 64  # round steps per writer/indexer the linearizer keeps in memory


def _key(epoch: int, writer: bytes, length: int | None = None) -> bytes:
    key = _STEPS + _BE64.pack(epoch) + writer
    return key if length is None else key + _BE64.pack(length)


class RoundStepStore:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.indexer_count = 1  # size of round vectors in the current epoch

    def save(self, rows: Iterable[list[Any]]) -> None:
        """Rows from ``Linearizer.take_round_steps()``: ``[epoch, writer, length, rounds]``."""
        items = [
            (_key(epoch, writer, length), encoding.encode_trusted(rounds))
            for epoch, writer, length, rounds in rows
        ]
        if items:
            self._storage.put_many(items)

    def lookup(self, epoch: int, writer: bytes, length: int) -> list[int]:
        """Round vector of the newest stored step of ``writer`` at or below ``length``."""
        prefix = _key(epoch, writer)
        found = self._storage.floor(prefix, prefix + _BE64.pack(length))
        if found is None:
            return [-1] * self.indexer_count
        rounds: list[int] = encoding.decode(found[1])
        return rounds

    def newest(
        self, epoch: int, writers: Iterable[bytes], window: int = WINDOW
    ) -> list[list[Any]]:
        """The newest ``window`` rows of each writer, oldest first (what ``restore`` needs)."""
        rows: list[list[Any]] = []
        start = len(_STEPS)
        for writer in writers:
            stored = self._storage.iterate(_key(epoch, writer), reverse=True, limit=window)
            for key, value in reversed(stored):
                length = _BE64.unpack(key[start + 40 : start + 48])[0]
                rows.append([epoch, writer, length, encoding.decode(value)])
        return rows

    def drop_epoch(self, epoch: int) -> None:
        self._storage.delete_prefix(_STEPS + _BE64.pack(epoch))


__all__ = ["WINDOW", "RoundStepStore"]
