"""The block format of a writer's oplog: one DAG node per block.

A block is canonical CBOR::

    {"v": 1, "heads": [[writer_key, length], ...], "batch": k, "value": bytes | null,
     "ckpt": [signature, ...] (optional)}

* ``heads`` are the DAG heads the writer had seen when appending (its own previous node is an
  implicit dependency and is never listed). Lengths are 1-based: the node at index i of a log
  is ``(key, i + 1)``. Heads are sorted and unique.
* ``batch`` counts down inside an atomic batch (3, 2, 1): the batch ends at the node with 1.
* ``value`` ``null`` marks an *ack*, a vote only: ``apply`` never sees it.
* ``ckpt`` (optional, non-empty) lists an indexer's signatures over confirmed checkpoints
  (``checkpoint.py``): the newest one, plus one per indexer-set change boundary it confirmed.

``decode_block`` refuses anything else with a DecodeError that says what was wrong; the base
reports such a writer instead of freezing silently.

Both directions run once per value, so they have fast paths for the one canonical layout
(keys in canonical order: ``v``, ``ckpt``, ``batch``, ``heads``, ``value``):

* ``encode_block`` writes the bytes directly; they are exactly the canonical CBOR of the map
  above (``_encode_block_generic``, kept as the reference and used for anything that does not
  have the plain field types).
* ``decode_block`` first parses that layout byte by byte, accepting only canonical heads and
  every value the full checks accept; at the first byte that differs it hands the whole input
  to ``_decode_block_checked`` (generic decoder + per-field checks), so malformed or
  non-canonical input gets the same DecodeError as before. ``tests/property/test_fast_cbor.py``
  checks both paths agree on valid, mutated and random input.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from .. import encoding
from ..errors import DecodeError, EncodeError
from .checkpoint import CheckpointSignature

FORMAT_VERSION = 1
KEY_BYTES = 32
MAX_HEADS = 1024
MAX_BATCH = 1 << 20
MAX_CHECKPOINTS = 64


class OplogBlock(NamedTuple):
    """One decoded block. A named tuple, not a frozen dataclass: one is built per value on
    both sides (append, decode), and a tuple costs a third of the dataclass's field-by-field
    ``object.__setattr__``."""

    heads: tuple[tuple[bytes, int], ...]
    batch: int = 1
    value: bytes | None = None
    checkpoints: tuple[CheckpointSignature, ...] = ()

    @property
    def is_ack(self) -> bool:
        return self.value is None


# Canonical CBOR pieces of the fixed layout: map heads, keys, and the ``"v": 1`` entry.
_MAP4, _MAP5 = b"\xa4", b"\xa5"
_V1 = b"\x61v\x01"
_CKPT = b"\x64ckpt"
_BATCH = b"\x65batch"
_HEADS = b"\x65heads"
_VALUE = b"\x65value"
_NULL = b"\xf6"
_HEAD_START = b"\x82\x58\x20"  # [ 32-byte string
_HASH_HEAD = b"\x58\x20"
_SIGNATURE_HEAD = b"\x58\x40"
_SIGNATURE_ITEM = 0x87  # a 7-item array
_BE16, _BE32, _BE64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")


def encode_block(block: OplogBlock) -> bytes:
    """Canonical CBOR of ``block`` (byte for byte ``_encode_block_generic``)."""
    heads, batch, value = block.heads, block.batch, block.value
    if heads:
        heads = tuple(sorted(set(heads)))
    try:
        if type(batch) is not int or not (value is None or type(value) is bytes):
            raise ValueError("not the plain field types")
        parts = [_MAP5 if block.checkpoints else _MAP4, _V1]
        if block.checkpoints:
            parts.append(_CKPT)
            parts.append(encoding.encode_trusted([c.to_wire() for c in block.checkpoints]))
        parts.append(_BATCH)
        parts.append(encoding.uint(batch))
        parts.append(_HEADS)
        parts.append(encoding.head(encoding.MAJOR_ARRAY, len(heads)))
        for key, length in heads:
            if type(key) is not bytes or type(length) is not int:
                raise ValueError("not the plain field types")
            parts.append(b"\x82" + encoding.head(encoding.MAJOR_BYTES, len(key)))
            parts.append(key)
            parts.append(encoding.uint(length))
        parts.append(_VALUE)
        if value is None:
            parts.append(_NULL)
        else:
            parts.append(encoding.head(encoding.MAJOR_BYTES, len(value)))
            parts.append(value)
    except ValueError:  # odd types, negative or huge integers: the generic encoder decides
        return _encode_block_generic(block)
    data = b"".join(parts)
    if len(data) > encoding.MAX_SIZE:
        raise EncodeError(f"oplog block of {len(data)} bytes is over the {encoding.MAX_SIZE} limit")
    return data


def _encode_block_generic(block: OplogBlock) -> bytes:
    obj: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "heads": [[key, length] for key, length in sorted(set(block.heads))],
        "batch": block.batch,
        "value": block.value,
    }
    if block.checkpoints:
        obj["ckpt"] = [c.to_wire() for c in block.checkpoints]
    # every field has a fixed type checked at construction (the base builds these itself),
    # so the generic type walk of ``encoding.encode`` is skipped; readers still check all
    data = encoding.encode_trusted(obj)
    if len(data) > encoding.MAX_SIZE:
        raise EncodeError(f"oplog block of {len(data)} bytes is over the {encoding.MAX_SIZE} limit")
    return data


class _UnusualError(Exception):
    """The input leaves the canonical layout: the checked path decides (and names why)."""


def _argument(data: bytes, p: int, info: int) -> tuple[int, int]:
    """The argument of the item at ``data[p]`` (``info``: its low five bits) if written in its
    shortest form, and the position after the head."""
    if info < 24:
        return info, p + 1
    if info == 24:
        n = data[p + 1]
        if n >= 24:
            return n, p + 2
    elif info == 25:
        n = _BE16.unpack_from(data, p + 1)[0]
        if n >= 0x100:
            return n, p + 3
    elif info == 26:
        n = _BE32.unpack_from(data, p + 1)[0]
        if n >= 0x10000:
            return n, p + 5
    elif info == 27:
        n = _BE64.unpack_from(data, p + 1)[0]
        if n >= 0x100000000:
            return n, p + 9
    raise _UnusualError


def _uint(data: bytes, p: int) -> tuple[int, int]:
    """The canonical unsigned integer at ``data[p]`` and the position after it."""
    first = data[p]
    if first < 24:
        return first, p + 1
    if first > 27:
        raise _UnusualError
    return _argument(data, p, first)


def _length(data: bytes, p: int, major: int) -> tuple[int, int]:
    """The canonical length of the ``major`` item at ``data[p]`` and the position after it."""
    first = data[p]
    if first & 0xE0 != major:
        raise _UnusualError
    return _argument(data, p, first & 0x1F)


def decode_block(data: bytes) -> OplogBlock:
    """The block encoded in ``data``; DecodeError naming the problem for anything else."""
    if type(data) is bytes and len(data) <= encoding.MAX_SIZE:
        try:
            return _decode_block_fast(data)
        except (_UnusualError, IndexError, struct.error):
            pass
    return _decode_block_checked(data)


def _decode_block_fast(data: bytes) -> OplogBlock:
    """The canonical layout parsed directly; ``_UnusualError`` (or an IndexError or
    struct.error at a cut) at the first byte that is not exactly what a valid block has."""
    first = data[0]
    if first not in (0xA4, 0xA5):
        raise _UnusualError
    if data[1:4] != _V1:
        raise _UnusualError
    p = 4
    checkpoints: tuple[CheckpointSignature, ...] = ()
    if first == 0xA5:
        if data[4:9] != _CKPT:
            raise _UnusualError
        count, p = _length(data, 9, encoding.MAJOR_ARRAY)
        if not 1 <= count <= MAX_CHECKPOINTS:
            raise _UnusualError
        signatures = []
        for _ in range(count):
            if data[p] != _SIGNATURE_ITEM:
                raise _UnusualError
            epoch, p = _uint(data, p + 1)
            confirmed, p = _uint(data, p)
            view_length, p = _uint(data, p)
            fixed = data[p : p + 2 + 32 + 2 + 32 + 2 + 32 + 2 + 64]
            if (
                len(fixed) != 168
                or fixed[0:2] != _HASH_HEAD
                or fixed[34:36] != _HASH_HEAD
                or fixed[68:70] != _HASH_HEAD
                or fixed[102:104] != _SIGNATURE_HEAD
            ):
                raise _UnusualError
            p += 168
            signatures.append(
                CheckpointSignature(
                    epoch,
                    confirmed,
                    view_length,
                    fixed[2:34],
                    fixed[36:68],
                    fixed[70:102],
                    fixed[104:168],
                )
            )
        checkpoints = tuple(signatures)
    if data[p : p + 6] != _BATCH:
        raise _UnusualError
    batch, p = _uint(data, p + 6)
    if not 1 <= batch <= MAX_BATCH:
        raise _UnusualError
    if data[p : p + 6] != _HEADS:
        raise _UnusualError
    count, p = _length(data, p + 6, encoding.MAJOR_ARRAY)
    if count > MAX_HEADS:
        raise _UnusualError
    heads: list[tuple[bytes, int]] = []
    for _ in range(count):
        if data[p : p + 3] != _HEAD_START:
            raise _UnusualError
        key = data[p + 3 : p + 35]
        length, p = _uint(data, p + 35)  # an IndexError if the key was cut short
        if length < 1:
            raise _UnusualError
        head = (key, length)
        if heads and not heads[-1] < head:
            raise _UnusualError  # not sorted or not unique
        heads.append(head)
    if data[p : p + 6] != _VALUE:
        raise _UnusualError
    p += 6
    value: bytes | None
    if data[p] == 0xF6:
        value, p = None, p + 1
        if batch != 1:
            raise _UnusualError
    else:
        size, p = _length(data, p, encoding.MAJOR_BYTES)
        value, p = data[p : p + size], p + size
    if p != len(data):
        raise _UnusualError  # trailing bytes, or the value was cut short
    return OplogBlock(heads=tuple(heads), batch=batch, value=value, checkpoints=checkpoints)


def _decode_block_checked(data: bytes) -> OplogBlock:
    """Generic decoding plus a check of every field: the reference for ``decode_block``."""
    obj = encoding.expect_map(encoding.decode(data), "oplog block")
    allowed = {"v", "heads", "batch", "value", "ckpt"}
    extra = set(obj) - allowed
    if extra:
        raise DecodeError(f"oplog block: unknown fields {sorted(map(str, extra))}")
    version = encoding.field(obj, "v", int, "oplog block")
    if version != FORMAT_VERSION:
        raise DecodeError(f"oplog block: unsupported format version {version}")
    raw_heads = encoding.field(obj, "heads", list, "oplog block")
    if len(raw_heads) > MAX_HEADS:
        raise DecodeError(f"oplog block: more than {MAX_HEADS} heads")
    heads: list[tuple[bytes, int]] = []
    for head in raw_heads:
        if (
            not isinstance(head, list)
            or len(head) != 2
            or not isinstance(head[0], bytes)
            or len(head[0]) != KEY_BYTES
            or not isinstance(head[1], int)
            or isinstance(head[1], bool)
            or head[1] < 1
        ):
            raise DecodeError("oplog block: a head must be [32-byte key, length >= 1]")
        heads.append((head[0], head[1]))
    if heads != sorted(set(heads)):
        raise DecodeError("oplog block: heads must be sorted and unique")
    batch = encoding.field(obj, "batch", int, "oplog block")
    if not 1 <= batch <= MAX_BATCH:
        raise DecodeError(f"oplog block: batch {batch} out of range")
    if "value" not in obj:
        raise DecodeError("oplog block: missing field 'value'")
    value = obj["value"]
    if value is not None and not isinstance(value, bytes):
        raise DecodeError("oplog block: value must be bytes or null")
    checkpoints: tuple[CheckpointSignature, ...] = ()
    if "ckpt" in obj:
        raw = obj["ckpt"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CHECKPOINTS:
            raise DecodeError(f"oplog block: ckpt must list 1..{MAX_CHECKPOINTS} signatures")
        checkpoints = tuple(CheckpointSignature.from_wire(c) for c in raw)
    if value is None and batch != 1:
        raise DecodeError("oplog block: an ack cannot be part of a batch")
    return OplogBlock(heads=tuple(heads), batch=batch, value=value, checkpoints=checkpoints)


__all__ = ["FORMAT_VERSION", "OplogBlock", "decode_block", "encode_block"]
