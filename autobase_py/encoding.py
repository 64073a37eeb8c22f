"""Canonical CBOR for every message, with size and depth limits.

``encode(obj)`` produces canonical CBOR (shortest integer forms, definite lengths, map keys
sorted by the length of their encoding, then bytewise: RFC 7049's canonical order, which is
what cbor2 writes), so equal values always give equal bytes and hashes over encodings are
stable across peers.

``decode(data)`` accepts only what ``encode`` produces: the plain data model (``None``,
``bool``, ``int``, ``float``, ``bytes``, ``str``, ``list``, ``dict`` with ``str``/``int`` keys),
no tags, at most ``MAX_DEPTH`` levels deep and ``MAX_SIZE`` bytes long, and, when ``strict`` (the
default), byte-for-byte canonical. Every failure, whatever the bytes, raises
:class:`~autobase_py.errors.DecodeError` and nothing else.

Encoding is done here in Python for the plain data model (exact ``None``, ``bool``, ``int``
within 64 bits, ``bytes``, ``str``, ``list``/``tuple``, ``dict`` with ``str``/``int`` keys, at
most ``MAX_DEPTH`` deep): cbor2's C encoder in canonical mode costs about twice as much per
item as assembling the heads by hand from tables (``bench/encoding_bench.py``), and the key
order of a map shape the library writes again and again is remembered instead of sorted each
time. Anything else (floats, bignums, subclasses, other keys, deeper or cyclic nesting) goes
to cbor2, so every value encodes to exactly the bytes ``cbor2.dumps(value, canonical=True)``
gives (``tests/property/test_fast_cbor.py`` checks that byte for byte). A value the Python
encoder takes also passes the type walk, so ``encode`` and ``decode`` skip that walk for it.

Fixed-layout preimages for hashes (the log's signable, tree hashes) are not CBOR; they live
next to their hashes in ``autobase_py.log``. Hot fixed-shape records (the oplog block) write
their CBOR with the head helpers below (:func:`head`, :func:`uint`) instead of building a
dict first.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2

from .errors import DecodeError, EncodeError

MAX_SIZE = 16 * 1024 * 1024
MAX_DEPTH = 32

_SCALARS = (type(None), bool, int, float, bytes, str)


_PLAIN = frozenset({type(None), bool, float, bytes, str})
_INT_MIN, _INT_LIMIT = -(2**64), 2**64


def _check(obj: Any, depth: int, error: type[DecodeError] | type[EncodeError]) -> None:
    # Exact type tests first (this runs on every message); subclasses take the slow path.
    kind = type(obj)
    if kind in _PLAIN:
        return
    if kind is int:
        if not _INT_MIN <= obj < _INT_LIMIT:
            raise error("integer outside the 64-bit range")
        return
    if depth >= MAX_DEPTH:
        raise error(f"nesting deeper than {MAX_DEPTH} levels")
    if kind is list or kind is tuple:
        for item in obj:
            if type(item) not in _PLAIN:
                _check(item, depth + 1, error)
        return
    if kind is dict:
        for key, value in obj.items():
            key_kind = type(key)
            if key_kind is not str and key_kind is not int:
                raise error(f"map key of type {key_kind.__name__} (only str and int keys)")
            if key_kind is int and not _INT_MIN <= key < _INT_LIMIT:
                raise error("integer map key outside the 64-bit range")
            if type(value) not in _PLAIN:
                _check(value, depth + 1, error)
        return
    if isinstance(obj, _SCALARS):
        if isinstance(obj, int) and not isinstance(obj, bool) and not _INT_MIN <= obj < _INT_LIMIT:
            raise error("integer outside the 64-bit range")
        return
    if isinstance(obj, (list, tuple, dict)):
        plain: Any = dict(obj) if isinstance(obj, dict) else list(obj)
        _check(plain, depth, error)
        return
    raise error(f"unsupported type {type(obj).__name__}")


# --- the Python encoder ---------------------------------------------------------------------

# Major types, already shifted into the top three bits of the initial byte.
MAJOR_UINT, MAJOR_NEGINT, MAJOR_BYTES, MAJOR_TEXT, MAJOR_ARRAY, MAJOR_MAP = (
    0x00, 0x20, 0x40, 0x60, 0x80, 0xA0,
)
_PACK8 = struct.Struct(">BB").pack
_PACK16 = struct.Struct(">BH").pack
_PACK32 = struct.Struct(">BI").pack
_PACK64 = struct.Struct(">BQ").pack
# Nesting the Python encoder takes, exactly what ``_check`` allows (deeper, or cyclic, goes to
# cbor2), so a value it encodes would also pass ``_check`` (``decode`` relies on it).
_FAST_DEPTH = MAX_DEPTH
# Map key orders remembered per tuple of keys (exact str, short, few: the library's record
# shapes): a memo of a pure function, bounded in entries and in the size of what it holds, so
# maps with ever-new keys (a peer's, say) only stop being remembered, never change their bytes.
_ORDERS: dict[tuple[Any, ...], tuple[tuple[bytes, Any], ...]] = {}
_ORDERS_MAX, _ORDER_KEYS_MAX, _ORDER_KEY_CHARS_MAX = 1024, 16, 32


class _NotPlainError(Exception):
    """The value needs cbor2: a float, an integer outside 64 bits, a subclass, deep nesting."""


def head(major: int, n: int) -> bytes:
    """The shortest CBOR initial byte(s) of ``major`` (``MAJOR_*``) with argument ``n``.

    Raises ``ValueError`` when ``n`` is negative or does not fit in 64 bits."""
    if n < 24:
        if n < 0:
            raise ValueError(f"negative CBOR argument {n}")
        return bytes((major | n,))
    if n < 0x100:
        return _PACK8(major | 24, n)
    if n < 0x10000:
        return _PACK16(major | 25, n)
    if n < 0x100000000:
        return _PACK32(major | 26, n)
    if n < 0x10000000000000000:
        return _PACK64(major | 27, n)
    raise ValueError(f"CBOR argument {n} does not fit in 64 bits")


# Heads of every major type for arguments below 256, by index.
_UINTS, _NEGINTS, _BYTES_HEADS, _TEXT_HEADS, _ARRAY_HEADS, _MAP_HEADS = (
    [head(major, n) for n in range(256)]
    for major in (MAJOR_UINT, MAJOR_NEGINT, MAJOR_BYTES, MAJOR_TEXT, MAJOR_ARRAY, MAJOR_MAP)
)


def uint(n: int) -> bytes:
    """Canonical CBOR of the unsigned integer ``0 <= n < 2**64`` (ValueError otherwise)."""
    if 0 <= n < 256:
        return _UINTS[n]
    return head(MAJOR_UINT, n)


def _big_head(major: int, n: int) -> bytes:
    try:
        return head(major, n)
    except ValueError:
        raise _NotPlainError from None  # a bignum: cbor2 writes it as a tag


def _map_key(key: Any) -> bytes:
    if type(key) is str:
        raw = key.encode()
        n = len(raw)
        return (_TEXT_HEADS[n] if n < 256 else _big_head(MAJOR_TEXT, n)) + raw
    if type(key) is int:
        if key >= 0:
            return _UINTS[key] if key < 256 else _big_head(MAJOR_UINT, key)
        return _NEGINTS[-1 - key] if key >= -256 else _big_head(MAJOR_NEGINT, -1 - key)
    raise _NotPlainError  # only str and int keys are plain (``decode`` relies on it)


def _map_order(keys: tuple[Any, ...]) -> tuple[tuple[bytes, Any], ...]:
    """(encoded key, key) in canonical order; encodings of distinct plain keys differ, so the
    sort never compares the keys themselves."""
    order = tuple((e, k) for _, e, k in sorted((len(e), e, k) for e, k in
                                               [(_map_key(k), k) for k in keys]))
    if (
        len(_ORDERS) < _ORDERS_MAX
        and len(keys) <= _ORDER_KEYS_MAX
        and all(type(k) is str and len(k) <= _ORDER_KEY_CHARS_MAX for k in keys)
    ):
        _ORDERS[keys] = order
    return order


def _put(obj: Any, out: list[bytes], depth: int) -> None:
    # Exact types only (a subclass may encode differently in cbor2); most frequent first.
    kind = type(obj)
    if kind is bytes:
        n = len(obj)
        out.append(_BYTES_HEADS[n] if n < 256 else _big_head(MAJOR_BYTES, n))
        out.append(obj)
    elif kind is int:
        if 0 <= obj < 256:
            out.append(_UINTS[obj])
        elif 0 <= obj < 0x10000:
            out.append(_PACK16(0x19, obj))
        elif 0 <= obj < 0x100000000:
            out.append(_PACK32(0x1A, obj))
        elif obj >= 0:
            out.append(_big_head(MAJOR_UINT, obj))
        else:
            out.append(_NEGINTS[-1 - obj] if obj >= -256 else _big_head(MAJOR_NEGINT, -1 - obj))
    elif kind is list or kind is tuple:
        if depth >= _FAST_DEPTH:
            raise _NotPlainError
        n = len(obj)
        out.append(_ARRAY_HEADS[n] if n < 256 else _big_head(MAJOR_ARRAY, n))
        depth += 1
        for item in obj:  # the two commonest items inline, the rest through a call
            item_kind = type(item)
            if item_kind is bytes and len(item) < 256:
                out.append(_BYTES_HEADS[len(item)])
                out.append(item)
            elif item_kind is int and 0 <= item < 256:
                out.append(_UINTS[item])
            else:
                _put(item, out, depth)
    elif kind is dict:
        if depth >= _FAST_DEPTH:
            raise _NotPlainError
        n = len(obj)
        out.append(_MAP_HEADS[n] if n < 256 else _big_head(MAJOR_MAP, n))
        depth += 1
        keys = tuple(obj)
        order = _ORDERS.get(keys)
        if order is None:
            order = _map_order(keys)
        else:
            for key in keys:  # equal to a remembered tuple of str keys; a str subclass
                if type(key) is not str:  # (equal, yet another type) goes to cbor2
                    raise _NotPlainError
        for encoded, key in order:
            out.append(encoded)
            _put(obj[key], out, depth)
    elif kind is str:
        raw = obj.encode()
        n = len(raw)
        out.append(_TEXT_HEADS[n] if n < 256 else _big_head(MAJOR_TEXT, n))
        out.append(raw)
    elif obj is None:
        out.append(b"\xf6")
    elif kind is bool:
        out.append(b"\xf5" if obj else b"\xf4")
    else:
        raise _NotPlainError


def _encode_plain(obj: Any) -> bytes | None:
    """The canonical CBOR of ``obj`` if it is all plain (exact None, bool, 64-bit int, bytes,
    str, list/tuple, dict with str/int keys, at most MAX_DEPTH levels), else None. A value it
    encodes passes ``_check`` too, so callers that get bytes skip that walk."""
    out: list[bytes] = []
    try:
        _put(obj, out, 0)
    except (_NotPlainError, UnicodeEncodeError, TypeError):
        return None  # floats, bignums, subclasses, deep or cyclic nesting, lone surrogates
    return b"".join(out)


def _dumps(obj: Any) -> bytes:
    """``cbor2.dumps(obj, canonical=True)``, byte for byte, assembled in Python when it can."""
    data = _encode_plain(obj)
    if data is None:
        return bytes(cbor2.dumps(obj, canonical=True))
    return data


def encode(obj: Any) -> bytes:
    """Canonical CBOR bytes of ``obj`` (tuples encode as arrays, bytearray as bytes)."""
    if isinstance(obj, bytearray):
        obj = bytes(obj)
    data = _encode_plain(obj)
    if data is None:
        _check(obj, 0, EncodeError)
        try:
            data = bytes(cbor2.dumps(obj, canonical=True))
        except Exception as exc:  # cbor2 raises several types; one boundary converts them
            raise EncodeError(f"cannot encode: {exc}") from exc
    if len(data) > MAX_SIZE:
        raise EncodeError(f"encoding is {len(data)} bytes, over the {MAX_SIZE}-byte limit")
    return data


def encode_trusted(obj: Any) -> bytes:
    """Canonical CBOR of data the library built itself (persisted state), without the type
    and depth walk of :func:`encode` (which costs more than the encoding on large states).
    ``decode`` still applies every check when the bytes are read back."""
    try:
        return _dumps(obj)
    except Exception as exc:
        raise EncodeError(f"cannot encode: {exc}") from exc


def _reject_tag(_decoder: Any, tag: Any) -> Any:
    raise DecodeError(f"CBOR tag {tag.tag} is not allowed")


def decode(data: bytes, *, strict: bool = True) -> Any:
    """The value encoded in ``data``; raises DecodeError for anything ``encode`` cannot produce."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if not raw:
        raise DecodeError("empty input")
    if len(raw) > MAX_SIZE:
        raise DecodeError(f"input is {len(raw)} bytes, over the {MAX_SIZE}-byte limit")
    if raw[0] >> 5 == 6:
        raise DecodeError("CBOR tags are not allowed")
    try:
        obj = cbor2.loads(raw, tag_hook=_reject_tag)
    except DecodeError:
        raise
    except RecursionError as exc:
        raise DecodeError(f"nesting deeper than {MAX_DEPTH} levels") from exc
    except Exception as exc:  # cbor2's C decoder raises a zoo of types on garbage
        raise DecodeError(f"malformed CBOR: {exc}") from exc
    if not strict:
        _check(obj, 0, DecodeError)
    else:
        canonical = _encode_plain(obj)
        if canonical is None:
            _check(obj, 0, DecodeError)
            try:
                canonical = bytes(cbor2.dumps(obj, canonical=True))
            except Exception as exc:
                raise DecodeError(f"cannot re-encode decoded value: {exc}") from exc
        if canonical != raw:
            raise DecodeError("not canonical CBOR (or trailing bytes)")
    return obj


def expect_map(obj: Any, what: str) -> dict[Any, Any]:
    """``obj`` as a dict, or DecodeError naming ``what``."""
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: expected a map, got {type(obj).__name__}")
    return obj


def field(obj: dict[Any, Any], name: str | int, kind: type | tuple[type, ...], what: str) -> Any:
    """``obj[name]`` checked against ``kind``; DecodeError naming the message and field."""
    if name not in obj:
        raise DecodeError(f"{what}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise DecodeError(f"{what}: field {name!r} has type {type(value).__name__}")
    return value


__all__ = [
    "MAJOR_ARRAY",
    "MAJOR_BYTES",
    "MAJOR_MAP",
    "MAJOR_NEGINT",
    "MAJOR_TEXT",
    "MAJOR_UINT",
    "MAX_DEPTH",
    "MAX_SIZE",
    "decode",
    "encode",
    "encode_trusted",
    "expect_map",
    "field",
    "head",
    "uint",
]
