"""Replication messages on a ``("log", discovery_key)`` channel, and the range answer's uncles.

Theory of operation
-------------------
Messages are canonical CBOR maps whose field ``t`` names the type. Wire version 2 (what this
module speaks) is version 1 plus ``range`` and ``blocks``; a version-1 peer treats those as
malformed and drops the connection, so both ends must run version 2::

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
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Final

from .. import encoding
from ..errors import DecodeError, ProtocolError
from ..log import Node, leaf_hash, parent_hash

WIRE_VERSION: Final = 2
MAX_RANGE: Final = 1024  # blocks one range may ask for
MAX_UINT: Final = (1 << 53) - 1  # as in proofs
MAX_UNCLES: Final = 64  # a path climbs at most 64 levels
UNCLE_BYTES: Final = 40
_SIZE = struct.Struct("<Q")


class InvalidPeerDataError(ProtocolError):
    """The peer sent data that failed verification; it is disconnected."""

    code = "INVALID_PEER_DATA"


# -- encoding --------------------------------------------------------------------------------


def encode_sync(length: int, fork: int) -> bytes:
    return encoding.encode({"t": "sync", "length": length, "fork": fork})


def encode_request(request_id: int, index: int | None, upgrade: int | None) -> bytes:
    return encoding.encode({"t": "request", "id": request_id, "index": index, "upgrade": upgrade})


def encode_data(request_id: int, proof: bytes) -> bytes:
    return encoding.encode({"t": "data", "id": request_id, "proof": proof})


def encode_range(request_id: int, start: int, end: int) -> bytes:
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
    return encoding.encode({"t": "none", "id": request_id})


def encode_have(start: int, end: int) -> bytes:
    return encoding.encode({"t": "have", "start": start, "end": end})


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
}
_UINTS: Final = ("length", "fork", "id", "start", "end")


def _uint_or_none(obj: dict[Any, Any], name: str, what: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise DecodeError(f"{what}: field {name!r} must be an unsigned integer or null")
    return value


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


def decode_message(data: bytes) -> dict[str, Any]:
    """A checked replication message; InvalidPeerDataError for anything malformed."""
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
    "WIRE_VERSION",
    "InvalidPeerDataError",
    "RangeTree",
    "decode_message",
    "encode_blocks",
    "encode_data",
    "encode_have",
    "encode_none",
    "encode_range",
    "encode_request",
    "encode_sync",
    "pack_uncles",
    "ranges",
    "shared_uncles",
    "unpack_uncles",
]
