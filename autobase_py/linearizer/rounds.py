"""Round bookkeeping for confirmed nodes: a step function per (writer, indexer).

Every node ``v`` carries a *round vector* ``rv(v)``: for each indexer ``i`` of the current
epoch, the round of the newest node of ``i`` in ``v``'s past (``v`` included), or ``-1``.
Unconfirmed nodes keep their vector in memory. Confirmed nodes are forgotten, yet a late node
(from a writer that was partitioned for a while) may still name one of them as a head, and its
round depends on that head's vector. Along one writer's log the vector only grows, and each
entry only changes when a round changes, so ``k -> rv(writer@k)[i]`` is a step function with at
most one step per round: :class:`RoundSteps` stores those steps and answers the lookup by
bisection. Its size grows with the number of rounds of the epoch (a few integers per round per
writer/indexer pair), not with the number of nodes; it is reset at every epoch change.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import DecodeError

RoundLookup = Callable[[bytes, int], Sequence[int]]


class RoundSteps:
    """Per-writer, per-indexer step functions ``length -> round`` (``-1`` before any step)."""

    __slots__ = ("_fallback", "_journal", "_n", "_steps", "_trimmed", "_window")

    def __init__(
        self,
        indexer_count: int,
        *,
        journal: bool = False,
        window: int | None = None,
        fallback: RoundLookup | None = None,
    ) -> None:
        self._n = indexer_count
        # with a window, ``take`` keeps only the newest ``window`` steps of each function in
        # memory; older ones were handed out as rows and are read back through ``fallback``
        self._window = window
        self._fallback = fallback
        self._trimmed: dict[bytes, list[bool]] = {}
        # rows (writer, length, round vector) added since the last ``take``; None = not kept
        self._journal: list[list[Any]] | None = [] if journal else None
        # writer -> per indexer: (lengths where the round steps up, the round from there on),
        # as 8-byte integer arrays: a step costs 16 bytes
        self._steps: dict[bytes, list[tuple[array[int], array[int]]]] = {}

    def record(self, writer: bytes, length: int, rv: list[int]) -> None:
        """Note that ``writer@length`` has round vector ``rv`` (lengths arrive in order)."""
        per = self._steps.get(writer)
        if per is None:
            per = [(array("q"), array("q")) for _ in range(self._n)]
            self._steps[writer] = per
        stepped = False
        for i, value in enumerate(rv):
            starts, rounds = per[i]
            if value >= 0 and (not rounds or value > rounds[-1]):
                starts.append(length)
                rounds.append(value)
                stepped = True
        if stepped and self._journal is not None:
            self._journal.append([writer, length, list(rv)])

    @property
    def journaling(self) -> bool:
        return self._journal is not None

    def take(self) -> list[list[Any]]:
        """Rows recorded since the last call; the first call returns every step so far."""
        if self._journal is None:
            rows: list[list[Any]] = []
            for writer in sorted(self._steps):
                starts = sorted({k for per_starts, _ in self._steps[writer] for k in per_starts})
                rows.extend([writer, k, self.lookup(writer, k)] for k in starts)
            self._journal = []
        else:
            rows, self._journal = self._journal, []
        self.trim()
        return rows

    def trim(self, *, everything: bool = False) -> None:
        """Drop all but the newest ``window`` steps per function (no-op without a window).

        ``everything``: mark every function as possibly incomplete (after a partial replay).
        """
        if self._window is None:
            return
        keep = self._window
        for writer, per in self._steps.items():
            flags = self._trimmed.setdefault(writer, [False] * self._n)
            for i, (starts, rounds) in enumerate(per):
                if len(starts) > keep:
                    del starts[: len(starts) - keep]
                    del rounds[: len(rounds) - keep]
                    flags[i] = True
                elif everything:
                    flags[i] = True

    def replay(self, rows: list[list[Any]]) -> None:
        """Record rows produced by ``take`` (in their order)."""
        for row in rows:
            if (
                not isinstance(row, list)
                or len(row) != 3
                or not isinstance(row[0], bytes)
                or not _is_int(row[1])
                or not isinstance(row[2], list)
                or len(row[2]) != self._n
                or not all(_is_int(x) and -1 <= x < 2**63 for x in row[2])
            ):
                raise DecodeError("malformed round step row")
            self.record(row[0], row[1], row[2])

    def lookup(self, writer: bytes, length: int) -> list[int]:
        """The round vector of ``writer@length`` as recorded."""
        per = self._steps.get(writer)
        if per is None:
            per = []
        flags = self._trimmed.get(writer)
        out: list[int] = []
        for i, (starts, rounds) in enumerate(per):
            at = bisect_right(starts, length) - 1
            if at < 0 and flags is not None and flags[i]:
                return self._look_back(writer, length)
            out.append(rounds[at] if at >= 0 else -1)
        if not per and flags is not None and any(flags):
            return self._look_back(writer, length)
        return out or [-1] * self._n

    def _look_back(self, writer: bytes, length: int) -> list[int]:
        assert self._fallback is not None, "a window needs a fallback lookup"
        found = [int(x) for x in self._fallback(writer, length)]
        if len(found) != self._n:
            raise ValueError("the round lookup returned a vector of the wrong size")
        return found

    def entries(self) -> int:
        """How many steps are stored (for memory reports)."""
        return sum(len(starts) for per in self._steps.values() for starts, _ in per)

    @property
    def complete(self) -> bool:
        """Whether every step is still in memory (nothing trimmed)."""
        return not any(any(flags) for flags in self._trimmed.values())

    def encode(self, limits: dict[bytes, int]) -> list[Any]:
        """CBOR-ready steps, keeping only steps at or below ``limits[writer]`` (confirmed)."""
        out: list[Any] = []
        for writer in sorted(self._steps):
            limit = limits.get(writer, 0)
            per = []
            for starts, rounds in self._steps[writer]:
                keep = bisect_right(starts, limit)
                per.append([list(starts[:keep]), list(rounds[:keep])])
            out.append([writer, per])
        return out

    @classmethod
    def decode(cls, indexer_count: int, data: Any) -> RoundSteps:
        steps = cls(indexer_count)
        if not isinstance(data, list):
            raise DecodeError("round steps must be a list")
        for item in data:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes):
                raise DecodeError("malformed round steps entry")
            writer, per = item
            if not isinstance(per, list) or len(per) != indexer_count:
                raise DecodeError("round steps entry has the wrong indexer count")
            parsed: list[tuple[array[int], array[int]]] = []
            for pair in per:
                if (
                    not isinstance(pair, list)
                    or len(pair) != 2
                    or not all(isinstance(x, list) for x in pair)
                    or len(pair[0]) != len(pair[1])
                    or not all(_is_int(x) and -1 <= x < 2**63 for x in pair[0] + pair[1])
                ):
                    raise DecodeError("malformed round step function")
                parsed.append((array("q", pair[0]), array("q", pair[1])))
            steps._steps[writer] = parsed
        return steps


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
