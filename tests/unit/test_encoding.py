from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobase_py import encoding
from autobase_py.errors import DecodeError, EncodeError

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.binary(max_size=64),
    st.text(max_size=32),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip_is_canonical(value: Any) -> None:
    data = encoding.encode(value)
    assert encoding.decode(data) == value
    assert encoding.encode(encoding.decode(data)) == data


def test_map_keys_sorted_regardless_of_insertion_order() -> None:
    assert encoding.encode({"b": 1, "a": 2}) == encoding.encode({"a": 2, "b": 1})


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        value = encoding.decode(data)
    except DecodeError:
        return
    assert encoding.encode(value) == data  # whatever decodes is canonical


@given(values, st.data())
def test_truncated_encodings_raise_only_decode_error(value: Any, data: st.DataObject) -> None:
    raw = encoding.encode(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(DecodeError):
        encoding.decode(raw[:cut])


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "empty"),
        (b"\xc1\x00", "tags"),
        (bytes.fromhex("1b00000000000000ff"), "canonical"),  # 255 in a needlessly long form
        (b"\x01\x01", "canonical"),  # trailing bytes
        (b"\x81" * 100 + b"\x00", "nesting"),
        (b"\xa1\x01\x01", None),  # int keys are allowed
        (b"\xa1\x80\x01", "map key"),  # a list as a map key
    ],
)
def test_malformed_inputs_named(raw: bytes, problem: str | None) -> None:
    if problem is None:
        assert encoding.decode(raw) == {1: 1}
        return
    with pytest.raises(DecodeError, match=problem):
        encoding.decode(raw)


def test_non_strict_accepts_non_canonical() -> None:
    assert encoding.decode(bytes.fromhex("1b00000000000000ff"), strict=False) == 255


def test_encode_limits() -> None:
    nested: Any = 0
    for _ in range(encoding.MAX_DEPTH + 2):
        nested = [nested]
    with pytest.raises(EncodeError, match="nesting"):
        encoding.encode(nested)
    with pytest.raises(EncodeError, match="unsupported type"):
        encoding.encode({"x": object()})
    with pytest.raises(EncodeError, match="64-bit"):
        encoding.encode(2**70)
