"""B-tree nodes and their block formats.

A bee is a B+ tree: leaves hold sorted ``(key, value)`` pairs, internal nodes hold sorted
separator keys and one more child than keys. Child ``i`` of an internal node holds the keys
``k`` with ``keys[i-1] <= k < keys[i]`` (missing bounds are open).

Addresses. A stored node is named by its *address* ``block << 16 | slot``: the log block that
holds it and its position in that block. Every child address is smaller than the address of
the node naming it (an earlier block, or an earlier slot of the same block), so any walk down a
stored tree terminates, whatever a writer signed.

Two block formats, told apart by byte 0 (fixed-width little-endian fields; exactly one encoding
per node and per block):

Version 1, one node per block (still read; ``encode_node`` writes it)::

    byte 0        1
    byte 1        kind: KIND_LEAF (0) or KIND_INTERNAL (1), plus ROOT_FLAG (2) on the root
                  that ends each flush (so a reader can tell a log cut between two flushes
                  from a version)
    u16           n, the number of keys
    n x u16       key lengths
    leaf:         n x u32 value lengths
    internal:     (n + 1) x u32 child block indexes (n >= 1; each below this block's index;
                  the child is slot 0 of that block)
    bytes         the keys, concatenated, strictly increasing
    leaf: bytes   the values, concatenated
    (nothing after that)

Version 2, a *pack* of nodes (what a flush writes: the nodes of one flush, in post-order,
cut into blocks of about ``pack_bytes``, so a flush of a hundred scattered puts appends a
handful of blocks instead of one per node)::

    byte 0        2
    byte 1        0, or ROOT_FLAG (2) when the block's last node is the root ending a flush
    u16           m >= 1, the number of nodes (slots 0 .. m-1)
    m x u32       body lengths
    m bodies:
      u8          kind: KIND_LEAF (0) or KIND_INTERNAL (1)
      u16         n, the number of keys
      n x u16     key lengths
      leaf:       n x u32 value lengths
      internal:   (n + 1) x u64 child addresses (n >= 1; each below this node's own
                  address: in an earlier block, or in this block at an earlier slot)
      bytes       the keys, concatenated, strictly increasing
      leaf: bytes the values, concatenated

A lookup still touches one node per level, so at most one block per level: packing trades a
few more bytes per sparse fetch for far fewer blocks (signatures, hashes, rows) per flush.

Fixed-width headers let ``struct`` do the work: encoding is one ``join``, decoding a few
``unpack_from`` calls and slices. Limits that follow: keys up to 65,535 bytes, 65,535 keys per
node and nodes per block, block indexes below 2**32.

``decode_node`` (version 1) and ``decode_block`` (both versions) check all of that and raise
:class:`DecodeError` for anything else, so the tree code can trust a decoded node's shape. A
child slot beyond the end of an *earlier* block can only be noticed when that block is read;
the reader raises :class:`DecodeError` then.

In memory a :class:`Node` is either *stored* (``seq`` holds its address, never mutated: it may
sit in the shared cache) or *dirty* (``seq`` is None, owned by one batch, mutated in place until
the batch flushes). A dirty node's children are addresses or other dirty nodes; ``origin``
remembers the stored node it was copied from so a flush can reuse it when nothing changed.
A stored *internal* node also keeps its encoded ``body``: the common rewrite of an internal
node changes only child addresses (a 1-put flush rewrites the path to one leaf), and
:func:`patch_children` then splices the new addresses into the old body instead of encoding
the keys again (byte-identical to :func:`encode_body`).
"""

from __future__ import annotations

import struct
from itertools import accumulate, pairwise

from ..errors import DecodeError, EncodeError

SINGLE_VERSION = 1
PACK_VERSION = 2
FORMAT_VERSION = PACK_VERSION  # what a flush writes
KIND_LEAF = 0
KIND_INTERNAL = 1
ROOT_FLAG = 2
MAX_KEY_BYTES = 0xFFFF
MAX_KEYS = 0xFFFF
MAX_SEQ = 0xFFFFFFFF
SLOT_BITS = 16
SLOT_MASK = (1 << SLOT_BITS) - 1
MAX_SLOTS = SLOT_MASK + 1


class Node:
    """One B+ tree node; ``children is None`` for a leaf, ``values is None`` for an internal."""

    __slots__ = ("body", "children", "keys", "marks", "origin", "root", "seq", "values")

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
        self.body: bytes | None = None  # a stored internal node's encoded body, if known
        # A dirty internal node's child indexes that were made dirty in place, while every
        # other child is still the address copied from its origin (None: unknown, scan).
        self.marks: list[int] | None = None

    @property
    def leaf(self) -> bool:
        return self.children is None

    def dirty_copy(self) -> Node:
        """A mutable copy owned by a batch, remembering this node as its origin."""
        copy = _new_node(Node)  # skips __init__: this runs for every node a flush rewrites
        copy.keys = self.keys[:]
        values, children = self.values, self.children
        copy.values = None if values is None else values[:]
        copy.children = None if children is None else children[:]
        copy.seq = None
        copy.origin = self if self.seq is not None else self.origin
        copy.root = False
        copy.body = None
        copy.marks = None if children is None else []
        return copy

    def __repr__(self) -> str:
        kind = "leaf" if self.leaf else "internal"
        return f"Node({kind}, seq={self.seq}, keys={len(self.keys)})"


_new_node = object.__new__


def encode_node(node: Node, *, root: bool = False) -> bytes:
    """The version 1 block for a node whose children are all stored, named by block index
    (each is slot 0 of its block); ``root`` marks the root a flush ends with."""
    keys = node.keys
    n = len(keys)
    if n > MAX_KEYS:
        raise EncodeError(f"a bee node holds at most {MAX_KEYS} keys")
    kind = KIND_LEAF if node.children is None else KIND_INTERNAL
    if root:
        kind |= ROOT_FLAG
    try:
        head = struct.pack(f"<BBH{n}H", SINGLE_VERSION, kind, n, *map(len, keys))
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


def _sorted_keys(
    data: bytes,
    pos: int,
    end: int,
    key_lengths: tuple[int, ...],
    value_lengths: tuple[int, ...],
    *,
    what: str,
) -> tuple[list[bytes], int]:
    """The keys of one node body (checked strictly increasing) and their total size; the
    keys and values must fill ``data[pos:end]`` exactly. Shared by both block formats."""
    key_bytes = sum(key_lengths)
    if pos + key_bytes + sum(value_lengths) != end:
        noun = what.rsplit(maxsplit=1)[-1]
        raise DecodeError(f"{what}: lengths do not add up to the {noun} size")
    keys = _slices(data, pos, key_lengths)
    if not all(a < b for a, b in pairwise(keys)):
        raise DecodeError(f"{what}: keys must be strictly increasing")
    return keys, key_bytes


def decode_node(data: bytes, seq: int) -> Node:
    """The node stored as version 1 block ``seq``, children named by block index (as
    ``encode_node`` takes them); DecodeError unless ``data`` is exactly what ``encode_node``
    produces for a well-formed node."""
    if not isinstance(data, (bytes, bytearray)):
        raise DecodeError(f"bee block: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    size = len(data)
    if size < 4:
        raise DecodeError("bee block: too short")
    if data[0] != SINGLE_VERSION:
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
    keys, key_bytes = _sorted_keys(data, pos, size, key_lengths, value_lengths, what="bee block")
    if internal:
        if max(children) >= seq:
            raise DecodeError("bee block: child must name an earlier block")
        return Node(keys, None, children, seq, root=bool(flags & ROOT_FLAG))
    values = _slices(data, pos + key_bytes, value_lengths)
    return Node(keys, values, None, seq, root=bool(flags & ROOT_FLAG))


def _leaf_head(n: int) -> struct.Struct:
    return struct.Struct(f"<BH{n}H{n}I")


def _internal_head(n: int) -> struct.Struct:
    return struct.Struct(f"<BH{n}H{n + 1}Q")


def _addresses(n: int) -> struct.Struct:
    return struct.Struct(f"<{n + 1}Q")


_LEAF_HEADS = [_leaf_head(n) for n in range(257)]
_INTERNAL_HEADS = [_internal_head(n) for n in range(257)]
_ADDRESSES = [_addresses(n) for n in range(257)]


def encode_body(node: Node) -> bytes:
    """A node's body inside a pack; its children must all be stored (addresses)."""
    keys = node.keys
    n = len(keys)
    children = node.children
    try:
        if children is None:
            values = node.values
            if values is None or len(values) != n:
                raise EncodeError("leaf node needs one value per key")
            leaf = _LEAF_HEADS[n] if n < 257 else _leaf_head(n)
            head = leaf.pack(KIND_LEAF, n, *map(len, keys), *map(len, values))
            return b"".join([head, *keys, *values])
        if len(children) != n + 1:
            raise EncodeError("internal node needs one more child than keys")
        internal = _INTERNAL_HEADS[n] if n < 257 else _internal_head(n)
        # A child that is still a Node (unstored) is not an integer: struct refuses it.
        head = internal.pack(KIND_INTERNAL, n, *map(len, keys), *children)
    except struct.error as exc:
        if n > MAX_KEYS:
            raise EncodeError(f"a bee node holds at most {MAX_KEYS} keys") from exc
        raise EncodeError(f"bee node out of format limits (or an unstored child): {exc}") from exc
    return b"".join([head, *keys])


def patch_children(body: bytes, children: list[int]) -> bytes:
    """The body of an internal node with the same keys as the one encoded in ``body`` (and so
    as many children) but these child addresses: what :func:`encode_body` returns for it."""
    n = len(children) - 1
    start = 3 + 2 * n
    end = start + 8 * (n + 1)
    try:
        addresses = (_ADDRESSES[n] if n < 257 else _addresses(n)).pack(*children)
    except struct.error as exc:
        raise EncodeError(f"bee node out of format limits (or an unstored child): {exc}") from exc
    return b"".join([body[:start], addresses, body[end:]])


_ADDRESS = struct.Struct("<Q")


def patch_child(body: bytes, n: int, index: int, address: int) -> bytes:
    """The body of an internal node with ``n`` keys encoded in ``body``, with child ``index``
    now at ``address`` (the others unchanged): what :func:`encode_body` returns for it. A 1-put
    flush rewrites each internal node on its path this way (one child changed)."""
    at = 3 + 2 * n + 8 * index
    try:
        return body[:at] + _ADDRESS.pack(address) + body[at + 8 :]
    except struct.error as exc:
        raise EncodeError(f"bee node out of format limits (or an unstored child): {exc}") from exc


def _pack_head(m: int) -> struct.Struct:
    return struct.Struct(f"<BBH{m}I")


_PACK_HEADS = [_pack_head(m) for m in range(65)]


def encode_pack(bodies: list[bytes], *, root: bool) -> bytes:
    """A version 2 block holding ``bodies`` (from :func:`encode_body`) in slot order; ``root``
    marks the last one as the root a flush ends with."""
    m = len(bodies)
    if not 1 <= m <= MAX_SLOTS - 1:
        raise EncodeError(f"a bee pack holds 1 to {MAX_SLOTS - 1} nodes")
    try:
        head = (_PACK_HEADS[m] if m < 65 else _pack_head(m)).pack(
            PACK_VERSION, ROOT_FLAG if root else 0, m, *map(len, bodies)
        )
    except struct.error as exc:
        raise EncodeError(f"bee pack out of format limits: {exc}") from exc
    return b"".join([head, *bodies])


def _decode_body(data: bytes, start: int, end: int, seq: int, slot: int) -> Node:
    if end - start < 3:
        raise DecodeError("bee node: too short")
    kind = data[start]
    if kind > KIND_INTERNAL:
        raise DecodeError(f"bee node: unknown kind {kind}")
    n = data[start + 1] | data[start + 2] << 8
    pos = start + 3
    try:
        key_lengths = struct.unpack_from(f"<{n}H", data, pos)
        pos += 2 * n
        if kind == KIND_INTERNAL:
            if n == 0:
                raise DecodeError("bee node: internal node without keys")
            refs = struct.unpack_from(f"<{n + 1}Q", data, pos)
            pos += 8 * (n + 1)
            value_lengths: tuple[int, ...] = ()
        else:
            value_lengths = struct.unpack_from(f"<{n}I", data, pos)
            pos += 4 * n
    except struct.error as exc:
        raise DecodeError(f"bee node: truncated header: {exc}") from exc
    keys, key_bytes = _sorted_keys(data, pos, end, key_lengths, value_lengths, what="bee node")
    address = seq << SLOT_BITS | slot
    if kind == KIND_INTERNAL:
        if max(refs) >= address:
            raise DecodeError("bee node: child must come before its parent")
        node = Node(keys, None, list(refs), address)
        node.body = data[start:end]
        return node
    return Node(keys, _slices(data, pos + key_bytes, value_lengths), None, address)


class Block:
    """A stored block whose header (the node sizes) has been checked; nodes are decoded one
    slot at a time on demand, so a lookup pays only for the nodes it walks."""

    __slots__ = ("data", "ends", "root", "seq", "single")

    def __init__(self, data: bytes, seq: int) -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise DecodeError(f"bee block: expected bytes, got {type(data).__name__}")
        if not 0 <= seq <= MAX_SEQ:
            raise DecodeError(f"bee block: index {seq} out of range")
        data = bytes(data)
        self.data = data
        self.seq = seq
        self.single: Node | None = None
        if data[:1] == bytes([SINGLE_VERSION]):
            node = decode_node(data, seq)
            node.seq = seq << SLOT_BITS
            if node.children is not None:
                node.children = [child << SLOT_BITS for child in node.children]  # type: ignore[operator]
            self.single = node
            self.ends: tuple[int, ...] = (len(data),)
            self.root = node.root
            return
        size = len(data)
        if size < 4:
            raise DecodeError("bee block: too short")
        if data[0] != PACK_VERSION:
            raise DecodeError(f"bee block: unknown format version {data[0]}")
        flags = data[1]
        if flags not in (0, ROOT_FLAG):
            raise DecodeError(f"bee block: unknown pack flags {flags}")
        m = data[2] | data[3] << 8
        if m == 0:
            raise DecodeError("bee block: empty pack")
        try:
            lengths = struct.unpack_from(f"<{m}I", data, 4)
        except struct.error as exc:
            raise DecodeError(f"bee block: truncated header: {exc}") from exc
        self.ends = tuple(accumulate(lengths, initial=4 + 4 * m))
        if self.ends[-1] != size:
            raise DecodeError("bee block: node sizes do not add up to the block size")
        self.root = flags == ROOT_FLAG

    def __len__(self) -> int:
        """The number of nodes (slots) in the block."""
        return len(self.ends) - (self.single is None)

    def node(self, slot: int) -> Node:
        """The node in ``slot``: DecodeError if there is no such slot or it is malformed."""
        if self.single is not None:
            if slot != 0:
                raise DecodeError(f"bee block {self.seq} holds one node, not slot {slot}")
            return self.single
        ends = self.ends
        if not 0 <= slot < len(ends) - 1:
            raise DecodeError(
                f"bee block {self.seq} holds {len(ends) - 1} nodes, not slot {slot}"
            )
        node = _decode_body(self.data, ends[slot], ends[slot + 1], self.seq, slot)
        if self.root and slot == len(ends) - 2:
            node.root = True
        return node


def decode_block(data: bytes, seq: int) -> list[Node]:
    """The nodes stored in block ``seq`` (either version), in slot order, each carrying its
    address and with children named by address; the last is marked ``root`` when the block
    ends a flush. DecodeError for anything that is not exactly a well-formed block."""
    block = Block(data, seq)
    return [block.node(slot) for slot in range(len(block))]


__all__ = [
    "FORMAT_VERSION",
    "Block",
    "PACK_VERSION",
    "SINGLE_VERSION",
    "SLOT_BITS",
    "KIND_INTERNAL",
    "KIND_LEAF",
    "MAX_KEY_BYTES",
    "ROOT_FLAG",
    "Node",
    "decode_block",
    "decode_node",
    "encode_body",
    "encode_node",
    "encode_pack",
    "patch_child",
    "patch_children",
]
