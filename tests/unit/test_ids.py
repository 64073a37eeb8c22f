from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobase_py import ids
from autobase_py.errors import InvalidKeyError


def test_z32_known_values() -> None:
    # z-base-32 spec examples: 8 zero bits -> "yy"; 0xf0 -> "6y"
    assert ids.z32_encode(b"\x00") == "yy"
    assert ids.z32_encode(b"\xf0") == "6y"
    assert ids.z32_encode(b"") == ""


@given(st.binary(min_size=32, max_size=32))
def test_round_trip(key: bytes) -> None:
    text = ids.encode(key)
    assert len(text) == 52
    assert ids.decode(text) == key
    assert ids.decode(key.hex()) == key
    assert ids.decode(key.hex().upper()) == key
    assert ids.decode(f"  {text}\n") == key
    assert ids.normalize(text) == ids.normalize(key) == ids.normalize(bytearray(key)) == key


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("abc", "3 characters"),
        ("g" * 64, "not hex"),
        ("0" * 63, "63 characters"),
        ("l" * 52, "invalid z-base-32 character 'l'"),
        ("y" * 51 + "b", "padding bits"),
    ],
)
def test_decode_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(InvalidKeyError, match=problem):
        ids.decode(text)


def test_encode_rejects_wrong_length() -> None:
    with pytest.raises(InvalidKeyError, match="31"):
        ids.encode(b"x" * 31)


@given(st.text(max_size=80))
def test_decode_random_text_raises_only_typed_errors(text: str) -> None:
    try:
        key = ids.decode(text)
    except InvalidKeyError:
        return
    assert len(key) == 32


@given(st.one_of(st.binary(max_size=40), st.integers(), st.none()))
def test_normalize_random_values_raises_only_typed_errors(value: object) -> None:
    try:
        key = ids.normalize(value)  # type: ignore[arg-type]
    except InvalidKeyError:
        return
    assert len(key) == 32
