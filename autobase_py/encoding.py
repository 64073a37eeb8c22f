"""Canonical CBOR for every message, with size and depth limits.

``encode(obj)`` produces canonical CBOR (RFC 8949 section 4.2: shortest integer forms, map keys
sorted by their encoded bytes, definite lengths), so equal values always give equal bytes and
hashes over encodings are stable across peers.

``decode(data)`` accepts only what ``encode`` produces: the plain data model (``None``,
``bool``, ``int``, ``float``, ``bytes``, ``str``, ``list``, ``dict`` with ``str``/``int`` keys),
no tags, at most ``MAX_DEPTH`` levels deep and ``MAX_SIZE`` bytes long, and, when ``strict`` (the
default), byte-for-byte canonical. Every failure, whatever the bytes, raises
:class:`~autobase_py.errors.DecodeError` and nothing else.

Fixed-layout preimages for hashes (the log's signable, tree hashes) are not CBOR; they live
next to their hashes in ``autobase_py.log``.
"""

from __future__ import annotations

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


def encode(obj: Any) -> bytes:
    """Canonical CBOR bytes of ``obj`` (tuples encode as arrays, bytearray as bytes)."""
    if isinstance(obj, bytearray):
        obj = bytes(obj)
    _check(obj, 0, EncodeError)
    try:
        data = cbor2.dumps(obj, canonical=True)
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
        return bytes(cbor2.dumps(obj, canonical=True))
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
    _check(obj, 0, DecodeError)
    if strict:
        try:
            canonical = cbor2.dumps(obj, canonical=True)
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


__all__ = ["MAX_DEPTH", "MAX_SIZE", "decode", "encode", "encode_trusted", "expect_map", "field"]
