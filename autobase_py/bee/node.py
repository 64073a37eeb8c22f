"""B-tree nodes and their block format.

A bee is a B+ tree: leaves hold sorted ``(key, value)`` pairs, internal nodes hold sorted
separator keys and one more child than keys. Child ``i`` of an internal node holds the keys
``k`` with ``keys[i-1] <= k < keys[i]`` (missing bounds are open). Every stored node is one log
block; a child is named by its block index (``seq``), which is always smaller than the index of
the block naming it, so any walk down a stored tree terminates, whatever a writer signed.

Block layout (fixed-width fields, little-endian; exactly one encoding per node)::

    byte 0        FORMAT_VERSION (1)
    byte 1        kind: KIND_LEAF (0) or KIND_INTERNAL (1), plus ROOT_FLAG (2) on the root
                  that ends each flush (so a reader can tell a log cut between two flushes
                  from a version)
    u16           n, the number of keys
    n x u16       key lengths
    leaf:         n x u32 value lengths
    internal:     (n + 1) x u32 child block indexes (n >= 1; each below this block's index)
    bytes         the keys, concatenated, strictly increasing
    leaf: bytes   the values, concatenated
    (nothing after that)

Fixed-width headers let ``struct`` do the work: encoding is one ``join``, decoding a few
``unpack_from`` calls and slices, several times faster than CBOR for these shapes. Limits that
follow: keys up to 65,535 bytes, 65,535 keys per node, block indexes below 2**32.

``decode_node`` checks all of that and raises :class:`DecodeError` for anything else, so the
tree code can trust a decoded node's shape.

In memory a :class:`Node` is either *stored* (``seq`` set, never mutated: it may sit in the
shared cache) or *dirty* (``seq`` is None, owned by one batch, mutated in place until the batch
flushes). A dirty node's children are block indexes or other dirty nodes; ``origin`` remembers
the stored node it was copied from so a flush can reuse that block when nothing changed.
"""

from __future__ import annotations

import struct
from itertools import accumulate, pairwise

from ..errors import DecodeError, EncodeError

FORMAT_VERSION = 1
KIND_LEAF = 0
KIND_INTERNAL = 1
ROOT_FLAG = 2
MAX_KEY_BYTES = 0xFFFF
MAX_KEYS = 0xFFFF
MAX_SEQ = 0xFFFFFFFF


class Node:
    """One B+ tree node; ``children is None`` for a leaf, ``values is None`` for an internal."""

    __slots__ = ("children", "keys", "origin", "root", "seq", "values")

    def __init__(
        self,
        keys: list[bytes],
        values: list[bytes] | None,
        children: list[int | Node] | None,
        seq: int | None = None,
        *,
        origin: Node | None = None,
        root: bool = False,
    ) -> None:
        self.root = root
        self.keys = keys
        self.values = values
        self.children = children
        self.seq = seq
        self.origin = origin

    @property
    def leaf(self) -> bool:
        return self.children is None

    def dirty_copy(self) -> Node:
        """A mutable copy owned by a batch, remembering this node as its origin."""
        return Node(
            list(self.keys),
            None if self.values is None else list(self.values),
            None if self.children is None else list(self.children),
            None,
            origin=self if self.seq is not None else self.origin,
        )

    def __repr__(self) -> str:
        kind = "leaf" if self.leaf else "internal"
        return f"Node({kind}, seq={self.seq}, keys={len(self.keys)})"


def encode_node(node: Node, *, root: bool = False) -> bytes:
    """The block for a node whose children are all stored (block indexes); ``root`` marks
    the root a flush ends with."""
    keys = node.keys
    n = len(keys)
    if n > MAX_KEYS:
        raise EncodeError(f"a bee node holds at most {MAX_KEYS} keys")
    kind = KIND_LEAF if node.children is None else KIND_INTERNAL
    if root:
        kind |= ROOT_FLAG
    try:
        head = struct.pack(f"<BBH{n}H", FORMAT_VERSION, kind, n, *map(len, keys))
        if node.children is None:
            values = node.values
            if values is None or len(values) != n:
                raise EncodeError("leaf node needs one value per key")
            return b"".join(
                [head, struct.pack(f"<{n}I", *map(len, values)), *keys, *values]
            )
        if not all(type(child) is int for child in node.children):
            raise EncodeError("internal node still points at an unstored child")
        refs = struct.pack(f"<{len(node.children)}I", *node.children)
    except struct.error as exc:
        raise EncodeError(f"bee node out of format limits: {exc}") from exc
    return b"".join([head, refs, *keys])


def _slices(data: bytes, start: int, lengths: tuple[int, ...]) -> list[bytes]:
    ends = accumulate(lengths, initial=start)
    return [data[a:b] for a, b in pairwise(ends)]


def decode_node(data: bytes, seq: int) -> Node:
    """The node stored as block ``seq``; DecodeError unless ``data`` is exactly what
    ``encode_node`` produces for a well-formed node."""
    if not isinstance(data, (bytes, bytearray)):
        raise DecodeError(f"bee block: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    size = len(data)
    if size < 4:
        raise DecodeError("bee block: too short")
    if data[0] != FORMAT_VERSION:
        raise DecodeError(f"bee block: unknown format version {data[0]}")
    flags = data[1]
    if flags > (KIND_INTERNAL | ROOT_FLAG):
        raise DecodeError(f"bee block: unknown node kind {flags}")
    internal = bool(flags & KIND_INTERNAL)
    n = data[2] | data[3] << 8
    pos = 4 + 2 * n
    try:
        key_lengths = struct.unpack_from(f"<{n}H", data, 4)
        if internal:
            if n == 0:
                raise DecodeError("bee block: internal node without keys")
            children = list(struct.unpack_from(f"<{n + 1}I", data, pos))
            pos += 4 * (n + 1)
            value_lengths: tuple[int, ...] = ()
        else:
            value_lengths = struct.unpack_from(f"<{n}I", data, pos)
            pos += 4 * n
    except struct.error as exc:
        raise DecodeError(f"bee block: truncated header: {exc}") from exc
    key_bytes = sum(key_lengths)
    if pos + key_bytes + sum(value_lengths) != size:
        raise DecodeError("bee block: lengths do not add up to the block size")
    keys = _slices(data, pos, key_lengths)
    if not all(a < b for a, b in pairwise(keys)):
        raise DecodeError("bee block: keys must be strictly increasing")
    if internal:
        if max(children) >= seq:
            raise DecodeError("bee block: child must name an earlier block")
        return Node(keys, None, children, seq, root=bool(flags & ROOT_FLAG))
    values = _slices(data, pos + key_bytes, value_lengths)
    return Node(keys, values, None, seq, root=bool(flags & ROOT_FLAG))


__all__ = [
    "FORMAT_VERSION",
    "KIND_INTERNAL",
    "KIND_LEAF",
    "MAX_KEY_BYTES",
    "ROOT_FLAG",
    "Node",
    "decode_node",
    "encode_node",
]
