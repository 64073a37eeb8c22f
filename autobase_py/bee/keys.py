"""Order-preserving encoding of tuples into bee keys (for composite index keys).

A bee sorts its keys bytewise. Indexes need composite keys such as ``(type, name)`` whose byte
order must equal the natural tuple order, and a way to select "every tuple that starts with
``(type,)``". This module maps tuples of ``int`` (unsigned), ``bytes`` and ``str`` to bytes so
that, for any tuples ``a`` and ``b``::

    encode_tuple(a) < encode_tuple(b)  <=>  tuple_sort_key(a) < tuple_sort_key(b)

where elements compare first by kind (int < bytes < str), then by value, and a tuple that is a
proper prefix of another sorts first (Python's tuple rule).

Layout of one element (each begins with a kind tag below 0xFF)::

    int    0x10 · n · n big-endian bytes, minimal (0 is n = 0; up to 2**64 - 1)
    bytes  0x20 · escaped bytes · 0x00
    str    0x30 · escaped UTF-8 · 0x00

"Escaped" means every 0x00 byte becomes 0x00 0xFF, so the terminator 0x00 followed by a tag
(< 0xFF) or the end of the key sorts before any continuation of the string. Because every tag
is below 0xFF, ``prefix_range(p)`` is simply ``[encode_tuple(p), encode_tuple(p) + 0xFF)``: it
holds exactly the encodings of tuples whose first ``len(p)`` elements equal ``p`` (an escaped
string continuing past ``p``'s terminator continues with 0xFF, which lands at or past the
upper bound).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from ..errors import DecodeError, EncodeError

Element: TypeAlias = int | bytes | str
KeyTuple: TypeAlias = tuple[Element, ...]

TAG_INT = 0x10
TAG_BYTES = 0x20
TAG_STR = 0x30
_MAX_UINT = 2**64 - 1
_KIND_RANK = {int: 0, bytes: 1, str: 2}


# Small integers (collection and index ids, counters) are encoded once, up front.
_SMALL_INTS = tuple(
    bytes((TAG_INT, 0)) if n == 0 else bytes((TAG_INT, 1, n)) for n in range(256)
)


def _encode_str(element: str) -> bytes:
    try:
        raw = element.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"key string is not valid unicode: {exc}") from exc
    if b"\x00" in raw:
        raw = raw.replace(b"\x00", b"\x00\xff")
    return b"\x30" + raw + b"\x00"


def _encode_bytes(element: bytes) -> bytes:
    if b"\x00" in element:
        element = element.replace(b"\x00", b"\x00\xff")
    return b"\x20" + element + b"\x00"


def _encode_general(element: Element) -> bytes:
    """Any accepted element, subclasses included (the exact-type cases take the fast path)."""
    if isinstance(element, bool):
        raise EncodeError("bool is not a key element (use 0/1)")
    if isinstance(element, int):
        if not 0 <= element <= _MAX_UINT:
            raise EncodeError(f"key integer {element} outside 0..2**64-1")
        value = int(element)
        if value < 256:
            return _SMALL_INTS[value]
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return bytes((TAG_INT, len(raw))) + raw
    if isinstance(element, (bytes, bytearray, memoryview)):
        return _encode_bytes(bytes(element))
    if isinstance(element, str):
        return _encode_str(str(element))
    raise EncodeError(f"key element of type {type(element).__name__} (int, bytes, str only)")


def encode_element(element: Element) -> bytes:
    """The order-preserving encoding of one tuple element."""
    # Exact-type dispatch first: keys are built on every write, and the isinstance chain
    # (bool before int, three byte-like types) costs more than the encoding itself.
    kind = type(element)
    if kind is str:
        return _encode_str(element)  # type: ignore[arg-type]
    if kind is int and 0 <= element < 256:  # type: ignore[operator]
        return _SMALL_INTS[element]  # type: ignore[index]
    if kind is bytes:
        return _encode_bytes(element)  # type: ignore[arg-type]
    return _encode_general(element)


def encode_tuple(elements: Sequence[Element]) -> bytes:
    """The bee key for a tuple of elements (an empty tuple encodes as empty bytes)."""
    return b"".join([encode_element(e) for e in elements])


def _unescape(data: bytes, start: int) -> tuple[bytes, int]:
    out = bytearray()
    i = start
    n = len(data)
    while True:
        j = data.find(b"\x00", i)
        if j < 0:
            raise DecodeError("key string element has no terminator")
        out += data[i:j]
        if j + 1 < n and data[j + 1] == 0xFF:
            out.append(0)
            i = j + 2
            continue
        return bytes(out), j + 1


def decode_tuple(data: bytes) -> KeyTuple:
    """The tuple ``encode_tuple`` turned into ``data``; DecodeError on anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    out: list[Element] = []
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag == TAG_INT:
            if i >= len(data):
                raise DecodeError("key integer element is truncated")
            n = data[i]
            if n > 8 or i + 1 + n > len(data):
                raise DecodeError("key integer element has a bad length")
            raw = data[i + 1 : i + 1 + n]
            if n and raw[0] == 0:
                raise DecodeError("key integer element is not minimal")
            out.append(int.from_bytes(raw, "big"))
            i += 1 + n
        elif tag in (TAG_BYTES, TAG_STR):
            raw, i = _unescape(data, i)
            if tag == TAG_BYTES:
                out.append(raw)
            else:
                try:
                    out.append(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise DecodeError(f"key string element is not UTF-8: {exc}") from exc
        else:
            raise DecodeError(f"unknown key element tag 0x{tag:02x}")
    return tuple(out)


def prefix_range(prefix: Sequence[Element]) -> dict[str, bytes]:
    """Range bounds ``{"gte": ..., "lt": ...}`` selecting exactly the tuples starting with
    ``prefix`` (the prefix itself included); pass them as ``bee.range(**prefix_range(p))``."""
    low = encode_tuple(prefix)
    return {"gte": low, "lt": low + b"\xff"}


def tuple_sort_key(elements: Sequence[Element]) -> tuple[tuple[int, Element], ...]:
    """The reference order the encoding preserves (for tests and models)."""
    return tuple((_KIND_RANK[type(e) if not isinstance(e, bytes) else bytes], e) for e in elements)


__all__ = [
    "Element",
    "KeyTuple",
    "decode_tuple",
    "encode_element",
    "encode_tuple",
    "prefix_range",
    "tuple_sort_key",
]
