"""The stored tip: runs of applied-order records (``autobase_py.base.tip``)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autobase_py import encoding
from autobase_py.base import tip
from autobase_py.base.tip import Record, TipRows
from autobase_py.errors import DecodeError
from autobase_py.storage import Storage

A, B = b"a" * 32, b"b" * 32


def batch(writer: bytes, first: int, count: int, view_length: int) -> list[Record]:
    return [Record(writer, first + i, view_length, True) for i in range(count)]


def test_a_batch_is_one_row_and_reads_back() -> None:
    records = [*batch(A, 1, 100, 7), Record(B, 1, 7, False), Record(B, 2, 7, False)]
    records += batch(A, 101, 3, 9) + batch(A, 104, 2, 10)  # same writer, new view length
    rows = tip.encode_runs(records, 40)
    assert len(rows) == 4
    storage = Storage.open_memory()
    storage.put_many(rows)
    first, back, stored = tip.read(storage)
    assert (first, back) == (40, records)
    assert stored.starts == [40, 140, 142, 145] and (stored.lo, stored.hi) == (40, 147)


def test_a_gap_between_runs_is_a_decode_error() -> None:
    storage = Storage.open_memory()
    storage.put_many(tip.encode_runs(batch(A, 1, 3, 1), 0))
    storage.put_many(tip.encode_runs(batch(B, 1, 3, 2), 4))  # position 3 missing
    with pytest.raises(DecodeError, match="gap or overlap"):
        tip.read(storage)


def test_a_malformed_run_is_a_decode_error() -> None:
    storage = Storage.open_memory()
    storage.put(tip.RUNS_PREFIX + struct.pack(">Q", 5), b"short")
    with pytest.raises(DecodeError, match="malformed tip run"):
        tip.read(storage)


def test_one_row_per_position_is_converted_on_load(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "db.sqlite", fsync=False)
    records = [*batch(A, 1, 5, 3), Record(B, 4, 3, False)]
    for offset, record in enumerate(records):
        key = tip.LEGACY_PREFIX + struct.pack(">Q", 20 + offset)
        storage.put(key, encoding.encode(record.to_wire()))
    first, back, rows = tip.load(storage)
    assert (first, back, rows.starts) == (20, records, [20, 25])
    assert storage.iterate(tip.LEGACY_PREFIX) == []
    assert tip.read(storage)[:2] == (20, records)
    storage.close()


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    ops = st.one_of(
        st.tuples(st.just("apply"), st.integers(0, 2), st.integers(1, 6)),
        st.tuples(st.just("undo"), st.integers(0, 12), st.just(0)),
        st.tuples(st.just("confirm"), st.integers(0, 12), st.just(0)),
        st.tuples(st.just("write"), st.just(0), st.just(0)),
    )
    return draw(st.lists(ops, max_size=60))


@settings(max_examples=300, deadline=None)
@given(steps())
def test_written_runs_always_equal_the_records_in_memory(ops: list[tuple[str, int, int]]) -> None:
    """A model of the base's use: apply batches (or acks), undo back into the tip, confirm
    (also inside a run), and write once per "cycle"; what is stored must read back as what
    is in memory, starting at the floor."""
    storage = Storage.open_memory()
    rows = TipRows()
    records: list[Record] = []
    floor = dirty = 0
    lengths = {A: 0, B: 0, b"c" * 32: 0}
    view = 0

    def write() -> None:
        nonlocal dirty
        rows.write(storage, records, floor, dirty)
        dirty = floor + len(records)
        first, back, _ = tip.read(storage)
        assert back == records
        assert first == (floor if records else None)

    for op, a, b in ops:
        applied = floor + len(records)
        if op == "apply":
            writer = list(lengths)[a]
            is_value = b > 1 or a != 2  # writer c appends single acks
            view += 1 if is_value else 0
            dirty = min(dirty, applied)
            for _ in range(b if is_value else 1):
                lengths[writer] += 1
                records.append(Record(writer, lengths[writer], view, is_value))
        elif op == "undo":
            count = min(a, len(records))
            dirty = min(dirty, applied - count)
            del records[len(records) - count :]
        elif op == "confirm":
            count = min(a, len(records))
            del records[:count]
            floor += count
        else:
            write()
    write()


def test_runs_under_their_first_prefix_are_moved_on_load(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "db.sqlite", fsync=False)
    records = [*batch(A, 1, 4, 2), Record(B, 1, 2, False)]
    for key, value in tip.encode_runs(records, 9):
        storage.put(tip.EARLY_RUNS_PREFIX + key[len(tip.RUNS_PREFIX) :], value)
    first, back, rows = tip.load(storage)
    assert (first, back, rows.starts) == (9, records, [9, 13])
    assert storage.iterate(tip.EARLY_RUNS_PREFIX) == []
    assert tip.read(storage)[:2] == (9, records)
    storage.close()


def test_the_runs_sort_between_the_round_steps_and_the_state_records() -> None:
    """The rows every cycle writes share pages: steps, then tip runs, then ``base/~…``."""
    from autobase_py.base import core, round_steps

    assert round_steps._STEPS < tip.RUNS_PREFIX < core._STATE
    assert not tip.RUNS_PREFIX.startswith(tip.LEGACY_PREFIX)
