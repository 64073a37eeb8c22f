"""The applied-order records of the unconfirmed tip, and how they are stored.

Theory of operation
===================

Applying one order position leaves a :class:`Record`: whose node it was, the view log's length
after it, whether it was a value. The base keeps one per unconfirmed position in memory (undo
truncates the view back to a record's view length; a restart rebuilds the tip from them
instead of replaying), and stores them so that every commit leaves the stored tip equal to the
one in memory.

Runs. Consecutive records of one writer's consecutive nodes with the same view length and kind
(the nodes of one applied batch, a writer's acks) are stored as ONE row, a *run*, keyed by its
first order position: ``base/tips/`` + u64be(position) -> ``_RUN`` (writer, first node length,
count, view length, is-value). A batch of 100 values costs one row instead of 100 (the rows
were ~7 % of a three-indexer cycle at 100 values per append).

The stored runs tile the stored range ``[lo, hi)`` exactly; :class:`TipRows` keeps their starts
in memory. Once per cycle, :meth:`TipRows.write` brings the rows in line with memory, given
the record floor (the confirmed length: positions below it are forgotten) and the first
position that may have changed since the last write (``dirty_from``: an undo or a reorder of
acks moves it back):

- runs that start below the floor are deleted; the one that straddles it (a confirmation that
  ended inside a run) is written again from the floor, up to where the rewrite starts;
- the run holding the first changed position is rewritten from its start (its records before
  that position did not change and go into the new runs again), and every run after it;
- a run whose positions are applied and confirmed within one cycle is never written at all.

Bases written before runs stored one row per position (``base/tip/`` + u64be(position) -> a
CBOR list); :func:`load` converts them in one transaction when the base opens, and moves runs
written under their first prefix (``base/runs/``, which sorted before the round steps and cost
a WAL frame) to ``base/tips/``.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any, NamedTuple

from .. import encoding
from ..errors import DecodeError
from ..storage import Storage

# + u64be(first position): a run of applied-order records. The prefix sorts after the round
# steps (``base/steps/``) and before the state records (``base/~…``): the rows a cycle writes
# share their pages (``base/runs/`` sorted before the steps and cost ~0.6 WAL frames more per
# three-indexer commit).
RUNS_PREFIX = b"base/tips/"
LEGACY_PREFIX = b"base/tip/"  # + u64be(position): one record per row (before runs)
EARLY_RUNS_PREFIX = b"base/runs/"  # where runs were first kept (same rows): moved on load
_BE64 = struct.Struct(">Q")
_RUN = struct.Struct(">32sQQQ?")  # writer, first node length, count, view length, is value


class Record(NamedTuple):
    """What applying one order position left behind (a tuple: one is made per applied node)."""

    writer: bytes
    length: int
    view_length: int  # view log length after applying this position
    is_value: bool

    def to_wire(self) -> list[Any]:
        return [self.writer, self.length, self.view_length, self.is_value]

    @classmethod
    def from_wire(cls, obj: Any) -> Record:
        if (
            not isinstance(obj, list)
            or len(obj) != 4
            or not isinstance(obj[0], bytes)
            or not isinstance(obj[1], int)
            or not isinstance(obj[2], int)
            or not isinstance(obj[3], bool)
        ):
            raise DecodeError("base: malformed applied-order record")
        return cls(obj[0], obj[1], obj[2], obj[3])


def _key(position: int) -> bytes:
    return RUNS_PREFIX + _BE64.pack(position)


def encode_runs(records: Sequence[Record], first: int) -> list[tuple[bytes, bytes]]:
    """The rows of ``records`` (order positions from ``first`` on), one per run."""
    end = first + len(records)
    return [(_key(position), value) for position, value in _runs(records, first, first, end)]


def _runs(records: Sequence[Record], first: int, start: int, end: int) -> list[tuple[int, bytes]]:
    """(first position, packed run) of each run of positions ``[start, end)``."""
    runs: list[tuple[int, bytes]] = []
    i, stop = start - first, end - first
    pack = _RUN.pack
    while i < stop:
        writer, length, view_length, is_value = records[i]
        if len(writer) != 32:
            raise AssertionError("a writer key that is not 32 bytes")
        j = i + 1
        while j < stop:
            other = records[j]
            if (
                other[1] != length + j - i
                or other[2] != view_length
                or other[3] is not is_value
                or other[0] != writer
            ):
                break
            j += 1
        runs.append((first + i, pack(writer, length, j - i, view_length, is_value)))
        i = j
    return runs


def decode_run(key: bytes, value: bytes) -> tuple[int, list[Record]]:
    """(first position, records) of one stored run."""
    if len(key) != len(RUNS_PREFIX) + 8 or len(value) != _RUN.size:
        raise DecodeError("base: malformed tip run")
    writer, length, count, view_length, is_value = _RUN.unpack(value)
    if count == 0 or length == 0:
        raise DecodeError("base: empty tip run")
    start = _BE64.unpack(key[len(RUNS_PREFIX) :])[0]
    return start, [Record(writer, length + i, view_length, is_value) for i in range(count)]


class TipRows:
    """Which runs are stored: their starts, tiling ``[lo, hi)``."""

    __slots__ = ("hi", "starts")

    def __init__(self, hi: int = 0, starts: list[int] | None = None) -> None:
        self.hi = hi
        self.starts: list[int] = [] if starts is None else starts

    @property
    def lo(self) -> int:
        return self.starts[0] if self.starts else self.hi

    def write(
        self, storage: Storage, records: Sequence[Record], floor: int, dirty_from: int
    ) -> None:
        """Make the stored runs equal ``records`` (positions ``[floor, floor + len)``), of
        which only positions from ``dirty_from`` on may differ from what was written."""
        applied = floor + len(records)
        hi, starts = self.hi, self.starts
        rewrite = max(floor, min(hi, dirty_from))
        if rewrite < hi:  # the run holding it is rewritten whole (from the floor at most)
            i = bisect_right(starts, rewrite) - 1
            if i >= 0 and starts[i] < rewrite:
                rewrite = max(starts[i], floor)
        rows: list[tuple[int, bytes]] = []
        below = bisect_left(starts, floor)  # runs starting below the floor
        if below:
            straddle_end = starts[below] if below < len(starts) else hi
            storage.delete_range(_key(starts[0]), _key(floor))
            del starts[:below]
            if floor < min(straddle_end, rewrite):
                rows = _runs(records, floor, floor, min(straddle_end, rewrite))
                starts.insert(0, floor)
        if rewrite < hi:
            storage.delete_range(_key(rewrite), _key(hi))
            del starts[bisect_left(starts, rewrite) :]
        if rewrite < applied:
            fresh = _runs(records, floor, rewrite, applied)
            starts += [position for position, _ in fresh]
            rows += fresh
        if rows:
            storage.put_many((_key(position), value) for position, value in rows)
        self.hi = applied


def read(storage: Storage) -> tuple[int | None, list[Record], TipRows]:
    """The stored tip: (its first position, or None when empty; records; rows)."""
    first: int | None = None
    records: list[Record] = []
    starts: list[int] = []
    for key, value in storage.iterate(RUNS_PREFIX):
        start, run = decode_run(key, value)
        if first is None:
            first = start
        elif start != first + len(records):
            raise DecodeError("base: the stored tip runs leave a gap or overlap")
        starts.append(start)
        records += run
    end = 0 if first is None else first + len(records)
    return first, records, TipRows(end, starts)


def load(storage: Storage) -> tuple[int | None, list[Record], TipRows]:
    """:func:`read`, after converting rows of the one-row-per-position format, or moving runs
    kept under their first prefix (each in one transaction)."""
    early = storage.iterate(EARLY_RUNS_PREFIX)
    if early:
        with storage.transaction():
            storage.delete_prefix(EARLY_RUNS_PREFIX)
            storage.put_many(
                (RUNS_PREFIX + key[len(EARLY_RUNS_PREFIX) :], value) for key, value in early
            )
    legacy = storage.iterate(LEGACY_PREFIX)
    if legacy:
        first = _BE64.unpack(legacy[0][0][len(LEGACY_PREFIX) :])[0]
        records = [Record.from_wire(encoding.decode(v)) for _, v in legacy]
        for offset, (key, _) in enumerate(legacy):
            if _BE64.unpack(key[len(LEGACY_PREFIX) :])[0] != first + offset:
                raise DecodeError("base: the stored tip records leave a gap")
        with storage.transaction():
            storage.delete_prefix(LEGACY_PREFIX)
            storage.delete_prefix(RUNS_PREFIX)
            storage.put_many(encode_runs(records, first))
    return read(storage)


__all__ = [
    "EARLY_RUNS_PREFIX",
    "LEGACY_PREFIX",
    "RUNS_PREFIX",
    "Record",
    "TipRows",
    "decode_run",
    "encode_runs",
    "load",
    "read",
]
