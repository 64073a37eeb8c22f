"""Replication messages on a ``("log", discovery_key)`` channel, and the range answer's uncles.

Theory of operation
-------------------
Messages are canonical CBOR maps whose field ``t`` names the type. Wire version 2 is version
1 plus ``range`` and ``blocks``; a version-1 peer treats those as malformed and drops the
connection. Version 3 has version 2's messages, byte for byte, plus
one rule (``replication``: "No sync answers an upgrade"): a requester that stored an upgrade
answer does not sync the length it got to that server, which counts it there already. A
version-2 server next to a version-3 requester is not told that length until the requester's
next change (it asks that peer only within the length it knew: never wrong, at worst slower
for blocks only that peer holds), so both ends should run version 3.

Version 4 (what this module speaks) is version 3 plus ``follow`` and ``tip`` (the standing
upgrade request of :mod:`.replication`). A version-3 peer would drop those as malformed, so a
version-4 session first says it speaks them with :data:`VERSION_MARK`, a ``have`` for the one
block index no log can reach (``MAX_UINT``): a version-3 peer takes it as an announcement of a
block it never asked for and ignores it (nothing is refused there), a version-4 peer learns
that it may send ``follow``. A peer that never sent the mark is sent nothing new::

    sync     {t: "sync", length, fork}               my signed length and fork (sent on open
                                                     and whenever they change)
    request  {t: "request", id, index, upgrade}      a block (index or null) and/or an upgrade
                                                     from ``upgrade`` (my length, or 0)
    data     {t: "data", id, proof}                  ``encode_proof`` bytes answering a request
    range    {t: "range", id, start, end}            blocks [start, end), 1..MAX_RANGE of them
    blocks   {t: "blocks", id, fork, start,          blocks [start, start + n) answering a range
              values: [bytes] * n, uncles: [bytes] * n}  (a non-empty prefix of it)
    none     {t: "none", id}                         cannot serve ``id`` (a request, or the
                                                     first block of a range) (yet)
    have     {t: "have", start, end}                 blocks [start, end) I said "none" for
                                                     are stored now: ask again
    follow   {t: "follow", id, fork, length}         (v4) when you are past ``length`` at
                                                     ``fork``, send the upgrade from there
                                                     and the new blocks (``tip``) [or "none"]
    tip      {t: "tip", id, proof, values, nodes}    (v4) answers a follow: ``proof`` is an
                                                     ``encode_proof`` with only an upgrade
                                                     from the follow's length L to N;
                                                     ``values`` are blocks [L, L + n) (n may
                                                     be 0, at most MAX_TIP), ``nodes`` their
                                                     uncles up to the
                                                     roots of N, packed like range uncles, in
                                                     ``range_uncles(L, L + n, N)`` order

Uncles in a ``blocks`` answer. ``uncles[k]`` packs the uncles of block ``start + k`` (nearest
first) as 40-byte entries: size as u64 little-endian, then the 32-byte hash. The first block
carries all of them, up to the sender's root over it (what ``Log.proof`` gives). Every later
block ``i`` carries only the uncles below the lowest common ancestor of leaves ``i - 1`` and
``i`` (``((i - 1) ^ i).bit_length()`` of them; fewer when its root is lower): on average two
uncles (80 bytes) instead of ``log2(n)``. The sender computes most of those from the values it
sends (:class:`RangeTree`: the subtrees lying inside the answer) and reads the rest from its log.

The receiver files every uncle of an answer under its flat-tree index and checks the answer as
one range (``Log.apply_blocks``): it hashes the values bottom-up, taking a sent uncle wherever
the range needs a node from outside it, up to the roots of the length it trusts. Nothing is
stored unless the whole range verifies, so a lying sender cannot get anything stored; two
different values sent for one node, or a sent node the range does not hash to, is the sender's
fault.

Fast paths (same bytes). The small messages of live replication (``sync``, ``request``,
``data``, ``range``, ``none``, ``have``: several per appended block and peer) are written from
fixed byte templates (their canonical CBOR: the map head, the keys in canonical order and
shortest-form integers) instead of building a dict for the general encoder, and read by
:func:`_decode_fast`, which accepts only exactly that canonical layout with in-range values
and hands anything else to the general decoder, which decides (so both paths accept the same
bytes and give the same dict; ``tests/property/test_net_wire.py`` checks this on canonical
and mangled input).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Final

from .. import encoding
from ..errors import DecodeError, ProtocolError
from ..log import Node, leaf_hash, parent_hash

WIRE_VERSION: Final = 4
MAX_RANGE: Final = 1024  # blocks one range may ask for
MAX_TIP: Final = 4096  # blocks one tip may carry
MAX_UINT: Final = (1 << 53) - 1  # as in proofs
MAX_UNCLES: Final = 64  # a path climbs at most 64 levels
UNCLE_BYTES: Final = 40
_SIZE = struct.Struct("<Q")


class InvalidPeerDataError(ProtocolError):
    """The peer sent data that failed verification; it is disconnected."""

    code = "INVALID_PEER_DATA"


# -- encoding --------------------------------------------------------------------------------

# Canonical CBOR pieces of the fixed-shape messages: map head, then the keys by the length of
# their encoding (``t``, ``id``, ``end``, ``fork``, ``index``, ``proof``, ``start``, ``length``,
# ``upgrade``), each followed by its value.
_SYNC: Final = b"\xa3\x61t\x64sync\x64fork"
_LENGTH: Final = b"\x66length"
_REQUEST: Final = b"\xa4\x61t\x67request\x62id"
_INDEX: Final = b"\x65index"
_UPGRADE: Final = b"\x67upgrade"
_DATA: Final = b"\xa3\x61t\x64data\x62id"
_PROOF: Final = b"\x65proof"
_RANGE: Final = b"\xa4\x61t\x65range\x62id"
_END: Final = b"\x63end"
_START: Final = b"\x65start"
_NONE: Final = b"\xa2\x61t\x64none\x62id"
_HAVE: Final = b"\xa3\x61t\x64have\x63end"
_NULL: Final = b"\xf6"
_uint = encoding.uint


def encode_sync(length: int, fork: int) -> bytes:
    try:
        return _SYNC + _uint(fork) + _LENGTH + _uint(length)
    except ValueError:  # out of range: the general encoder says why
        return encoding.encode({"t": "sync", "length": length, "fork": fork})


def encode_request(request_id: int, index: int | None, upgrade: int | None) -> bytes:
    try:
        return (
            _REQUEST + _uint(request_id)
            + _INDEX + (_NULL if index is None else _uint(index))
            + _UPGRADE + (_NULL if upgrade is None else _uint(upgrade))
        )
    except ValueError:
        return encoding.encode(
            {"t": "request", "id": request_id, "index": index, "upgrade": upgrade}
        )


def encode_data(request_id: int, proof: bytes) -> bytes:
    try:
        return (
            _DATA + _uint(request_id) + _PROOF + encoding.head(encoding.MAJOR_BYTES, len(proof))
            + proof
        )
    except ValueError:
        return encoding.encode({"t": "data", "id": request_id, "proof": proof})


def encode_range(request_id: int, start: int, end: int) -> bytes:
    try:
        return _RANGE + _uint(request_id) + _END + _uint(end) + _START + _uint(start)
    except ValueError:
        return encoding.encode({"t": "range", "id": request_id, "start": start, "end": end})


def encode_blocks(
    request_id: int, fork: int, start: int, values: list[bytes], uncles: list[bytes]
) -> bytes:
    """A ``blocks`` answer; ``uncles[k]`` is :func:`pack_uncles` of block ``start + k``."""
    return encoding.encode_trusted(
        {"t": "blocks", "id": request_id, "fork": fork, "start": start, "values": values,
         "uncles": uncles}
    )


def encode_none(request_id: int) -> bytes:
    try:
        return _NONE + _uint(request_id)
    except ValueError:
        return encoding.encode({"t": "none", "id": request_id})


def encode_have(start: int, end: int) -> bytes:
    try:
        return _HAVE + _uint(end) + _START + _uint(start)
    except ValueError:
        return encoding.encode({"t": "have", "start": start, "end": end})


VERSION_MARK: Final = encode_have(MAX_UINT, MAX_UINT + 1)  # "I speak version 4" (see above)


def encode_follow(request_id: int, length: int, fork: int) -> bytes:
    return encoding.encode({"t": "follow", "id": request_id, "fork": fork, "length": length})


def encode_tip(request_id: int, proof: bytes, values: list[bytes], nodes: bytes) -> bytes:
    """A ``tip``: ``nodes`` is :func:`pack_uncles` of the range's uncles (``range_uncles``)."""
    return encoding.encode_trusted(
        {"t": "tip", "id": request_id, "proof": proof, "values": values, "nodes": nodes}
    )


def pack_uncles(nodes: tuple[tuple[int, bytes], ...] | list[tuple[int, bytes]]) -> bytes:
    return b"".join(_SIZE.pack(size) + digest for size, digest in nodes)


def unpack_uncles(data: bytes) -> list[tuple[int, bytes]]:
    """The (size, hash) entries of a packed uncle list (checked by :func:`decode_message`)."""
    unpack = _SIZE.unpack_from
    return [
        (unpack(data, pos)[0], data[pos + 8 : pos + UNCLE_BYTES])
        for pos in range(0, len(data), UNCLE_BYTES)
    ]


# -- decoding --------------------------------------------------------------------------------

_FIELDS: Final = {
    "sync": frozenset({"t", "length", "fork"}),
    "request": frozenset({"t", "id", "index", "upgrade"}),
    "data": frozenset({"t", "id", "proof"}),
    "range": frozenset({"t", "id", "start", "end"}),
    "blocks": frozenset({"t", "id", "fork", "start", "values", "uncles"}),
    "none": frozenset({"t", "id"}),
    "have": frozenset({"t", "start", "end"}),
    "follow": frozenset({"t", "id", "fork", "length"}),
    "tip": frozenset({"t", "id", "proof", "values", "nodes"}),
}
V3_TYPES: Final = frozenset(_FIELDS) - {"follow", "tip"}  # what a version-3 peer accepts
MAX_TIP_NODES: Final = 2 * MAX_UNCLES  # a range's uncles: at most two per tree level
_UINTS: Final = ("length", "fork", "id", "start", "end")


def _uint_or_none(obj: dict[Any, Any], name: str, what: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise DecodeError(f"{what}: field {name!r} must be an unsigned integer or null")
    return value


def _check_tip(obj: dict[Any, Any]) -> None:
    encoding.field(obj, "proof", bytes, "tip")
    values = encoding.field(obj, "values", list, "tip")
    nodes = encoding.field(obj, "nodes", bytes, "tip")
    if len(values) > MAX_TIP:
        raise DecodeError(f"tip: at most {MAX_TIP} values")
    for value in values:
        if type(value) is not bytes:
            raise DecodeError("tip: every value must be bytes")
    if len(nodes) % UNCLE_BYTES or len(nodes) > MAX_TIP_NODES * UNCLE_BYTES:
        raise DecodeError(f"tip: nodes must be at most {MAX_TIP_NODES} 40-byte entries")
    if nodes and not values:
        raise DecodeError("tip: uncles without values")
    for pos in range(0, len(nodes), UNCLE_BYTES):
        if _SIZE.unpack_from(nodes, pos)[0] > MAX_UINT:
            raise DecodeError("tip: uncle size out of range")


def _check_blocks(obj: dict[Any, Any]) -> None:
    values = encoding.field(obj, "values", list, "blocks")
    uncles = encoding.field(obj, "uncles", list, "blocks")
    if not 1 <= len(values) <= MAX_RANGE or len(uncles) != len(values):
        raise DecodeError(f"blocks: 1..{MAX_RANGE} values, with one uncle list each")
    if obj["start"] + len(values) > MAX_UINT:
        raise DecodeError("blocks: index out of range")
    for value in values:
        if type(value) is not bytes:
            raise DecodeError("blocks: every value must be bytes")
    limit = MAX_UNCLES * UNCLE_BYTES
    unpack = _SIZE.unpack_from
    for packed in uncles:
        if type(packed) is not bytes or len(packed) % UNCLE_BYTES or len(packed) > limit:
            raise DecodeError(f"blocks: uncles must be at most {MAX_UNCLES} 40-byte entries")
        for pos in range(0, len(packed), UNCLE_BYTES):
            if unpack(packed, pos)[0] > MAX_UINT:
                raise DecodeError("blocks: uncle size out of range")


_LIMIT: Final = 1 << 63  # every integer field is below this
_WIDTH: Final = {24: 1, 25: 2, 26: 4, 27: 8}  # argument bytes after a CBOR initial byte
_SMALLEST: Final = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}  # shortest form's minimum


def _arg(data: bytes, pos: int, major: int) -> tuple[int, int]:
    """The canonical (shortest-form) argument of the CBOR head of type ``major`` at ``pos``
    and the position after it; ValueError for anything else (the general decoder decides)."""
    first = data[pos] - major  # IndexError past the end: also "not the fast layout"
    if 0 <= first < 24:
        return first, pos + 1
    width = _WIDTH[first]  # KeyError: not an unsigned argument of this major type
    end = pos + 1 + width
    if end > len(data):
        raise ValueError("truncated")
    value = int.from_bytes(data[pos + 1 : end], "big")
    if value < _SMALLEST[first]:
        raise ValueError("not shortest form")
    return value, end


def _field(data: bytes, pos: int, key: bytes) -> tuple[int, int]:
    """``key`` at ``pos`` followed by an unsigned integer below 2**63."""
    end = pos + len(key)
    if data[pos:end] != key:
        raise ValueError("another layout")
    value, pos = _arg(data, end, 0)
    if value >= _LIMIT:
        raise ValueError("out of range")
    return value, pos


def _nullable(data: bytes, pos: int, key: bytes) -> tuple[int | None, int]:
    end = pos + len(key)
    if data[end : end + 1] == _NULL and data[pos:end] == key:
        return None, end + 1
    return _field(data, pos, key)


def _decode_fast(data: bytes) -> dict[str, Any] | None:
    """The message if ``data`` is exactly the canonical encoding of a valid sync, request,
    data, range, none or have; None for anything else (including every malformed input)."""
    if len(data) > encoding.MAX_SIZE:
        return None
    try:
        if data.startswith(_SYNC):
            fork, pos = _field(data, len(_SYNC), b"")
            length, pos = _field(data, pos, _LENGTH)
            msg: dict[str, Any] = {"t": "sync", "fork": fork, "length": length}
        elif data.startswith(_REQUEST):
            request_id, pos = _field(data, len(_REQUEST), b"")
            index, pos = _nullable(data, pos, _INDEX)
            upgrade, pos = _nullable(data, pos, _UPGRADE)
            if index is None and upgrade is None:
                return None
            msg = {"t": "request", "id": request_id, "index": index, "upgrade": upgrade}
        elif data.startswith(_DATA):
            request_id, pos = _field(data, len(_DATA), b"")
            size, pos = _bytes_head(data, pos)
            if pos + size != len(data):
                return None
            return {"t": "data", "id": request_id, "proof": data[pos:]}
        elif data.startswith(_RANGE):
            request_id, pos = _field(data, len(_RANGE), b"")
            end, pos = _field(data, pos, _END)
            start, pos = _field(data, pos, _START)
            if not 0 < end - start <= MAX_RANGE:
                return None
            msg = {"t": "range", "id": request_id, "end": end, "start": start}
        elif data.startswith(_NONE):
            request_id, pos = _field(data, len(_NONE), b"")
            msg = {"t": "none", "id": request_id}
        elif data.startswith(_HAVE):
            end, pos = _field(data, len(_HAVE), b"")
            start, pos = _field(data, pos, _START)
            if not start < end:
                return None
            msg = {"t": "have", "end": end, "start": start}
        else:
            return None
    except (ValueError, IndexError, KeyError):
        return None
    return msg if pos == len(data) else None


def _bytes_head(data: bytes, pos: int) -> tuple[int, int]:
    """``proof`` at ``pos``, then a byte string's head: (its length, where it starts)."""
    end = pos + len(_PROOF)
    if data[pos:end] != _PROOF:
        raise ValueError("another layout")
    return _arg(data, end, encoding.MAJOR_BYTES)


def decode_message(data: bytes) -> dict[str, Any]:
    """A checked replication message; InvalidPeerDataError for anything malformed."""
    if type(data) is bytes:
        fast = _decode_fast(data)
        if fast is not None:
            return fast
    try:
        obj = encoding.expect_map(encoding.decode(data), "replication message")
        kind = encoding.field(obj, "t", str, "replication message")
        if kind not in _FIELDS or frozenset(obj) != _FIELDS[kind]:
            raise DecodeError(f"replication message: bad type or fields for {kind!r}")
        for name in _UINTS:
            if name in obj:
                value = encoding.field(obj, name, int, kind)
                if not 0 <= value < 2**63:
                    raise DecodeError(f"{kind}: field {name!r} out of range")
        if kind == "request":
            _uint_or_none(obj, "index", kind)
            _uint_or_none(obj, "upgrade", kind)
            if obj["index"] is None and obj["upgrade"] is None:
                raise DecodeError("request: asks for nothing")
        elif kind == "data":
            encoding.field(obj, "proof", bytes, kind)
        elif kind == "blocks":
            _check_blocks(obj)
        elif kind == "tip":
            _check_tip(obj)
        elif kind == "have" and not obj["start"] < obj["end"]:
            raise DecodeError("have: empty range")
        elif kind == "range" and not 0 < obj["end"] - obj["start"] <= MAX_RANGE:
            raise DecodeError(f"range: must ask for 1..{MAX_RANGE} blocks")
    except DecodeError as exc:
        raise InvalidPeerDataError(f"malformed replication message: {exc.message}") from exc
    return obj


def ranges(indexes: list[int]) -> Iterator[tuple[int, int]]:
    """Sorted distinct indexes as half-open ranges of consecutive runs."""
    start = end = None
    for i in indexes:
        if end is not None and i == end:
            end += 1
            continue
        if start is not None and end is not None:
            yield start, end
        start, end = i, i + 1
    if start is not None and end is not None:
        yield start, end


# -- uncles of a range answer ----------------------------------------------------------------


def shared_uncles(index: int, start: int) -> int | None:
    """How many uncles block ``index`` of an answer starting at ``start`` carries (None: all):
    those below the lowest common ancestor of its leaf and block ``index - 1``'s."""
    if index == start:
        return None
    return ((index - 1) ^ index).bit_length()


class RangeTree:
    """The hashes of every aligned subtree lying inside ``[start, start + len(values))``,
    computed from the values (what a server needs for most of a range answer's uncles, without
    reading tree nodes from storage)."""

    __slots__ = ("_levels",)

    def __init__(self, start: int, values: list[bytes]) -> None:
        level = {start + k: (len(v), leaf_hash(v)) for k, v in enumerate(values)}
        self._levels = [level]  # depth -> {offset: (size, hash)}
        while len(level) > 1:
            above: dict[int, tuple[int, bytes]] = {}
            for offset, left in level.items():
                if not offset & 1 and (right := level.get(offset + 1)) is not None:
                    node = parent_hash(Node(0, *left), Node(0, *right))
                    above[offset >> 1] = (left[0] + right[0], node)
            if not above:
                break
            self._levels.append(above)
            level = above

    def uncles(self, index: int, count: int) -> list[tuple[int, bytes]] | None:
        """The first ``count`` uncles of block ``index``, or None if one lies outside."""
        levels = self._levels
        if count > len(levels):
            return None
        out = []
        for depth in range(count):
            node = levels[depth].get((index >> depth) ^ 1)
            if node is None:
                return None
            out.append(node)
        return out


__all__ = [
    "MAX_RANGE",
    "MAX_TIP",
    "MAX_UINT",
    "V3_TYPES",
    "VERSION_MARK",
    "WIRE_VERSION",
    "InvalidPeerDataError",
    "RangeTree",
    "decode_message",
    "encode_blocks",
    "encode_data",
    "encode_follow",
    "encode_have",
    "encode_none",
    "encode_range",
    "encode_request",
    "encode_sync",
    "encode_tip",
    "pack_uncles",
    "ranges",
    "shared_uncles",
    "unpack_uncles",
]
