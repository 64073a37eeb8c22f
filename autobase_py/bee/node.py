"""B-tree nodes and their block format.

A bee is a B+ tree: leaves hold sorted ``(key, value)`` pairs, internal nodes hold sorted
separator keys and one more child than keys. Child ``i`` of an internal node holds the keys
``k`` with ``keys[i-1] <= k < keys[i]`` (missing bounds are open). Every stored node is one log
block; a child is named by its block index (``seq``), which is always smaller than the index of
the block naming it, so any walk down a stored tree terminates, whatever a writer signed.

Block layout (canonical, one encoding per node)::

    byte 0   FORMAT_VERSION (1)
    byte 1   kind: KIND_LEAF (0) or KIND_INTERNAL (1), plus ROOT_FLAG (2) on the root that
             ends each flush (so a reader can tell a log cut between flushes from a version)
    rest     canonical CBOR array of two arrays:
             leaf:     [[key, ...], [value, ...]]       keys strictly increasing, equal counts
             internal: [[key, ...], [child seq, ...]]   >= 1 key, len(children) = len(keys) + 1,
                                                        0 <= child seq < this block's seq

``decode_node`` checks all of that and raises :class:`DecodeError` for anything else, so the
tree code can trust a decoded node's shape.

In memory a :class:`Node` is either *stored* (``seq`` set, never mutated: it may sit in the
shared cache) or *dirty* (``seq`` is None, owned by one batch, mutated in place until the batch
flushes). A dirty node's children are block indexes or other dirty nodes; ``origin`` remembers
the stored node it was copied from so a flush can reuse that block when nothing changed.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import cbor2

from ..errors import DecodeError, EncodeError

FORMAT_VERSION = 1
KIND_LEAF = 0
KIND_INTERNAL = 1
ROOT_FLAG = 2


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
    if node.children is None:
        if node.values is None or len(node.values) != len(node.keys):
            raise EncodeError("leaf node needs one value per key")
        body: list[Any] = [node.keys, node.values]
        kind = KIND_LEAF
    else:
        refs: list[int] = []
        for child in node.children:
            if not isinstance(child, int):
                raise EncodeError("internal node still points at an unstored child")
            refs.append(child)
        body = [node.keys, refs]
        kind = KIND_INTERNAL
    if root:
        kind |= ROOT_FLAG
    return bytes((FORMAT_VERSION, kind)) + cbor2.dumps(body, canonical=True)


def _all_bytes(items: list[Any]) -> bool:
    return all(type(item) is bytes for item in items)


def _increasing(keys: list[bytes]) -> bool:
    return all(a < b for a, b in pairwise(keys))


def decode_node(data: bytes, seq: int) -> Node:
    """The node stored as block ``seq``; DecodeError unless ``data`` is exactly what
    ``encode_node`` produces for a well-formed node."""
    if not isinstance(data, (bytes, bytearray)):
        raise DecodeError(f"bee block: expected bytes, got {type(data).__name__}")
    if len(data) < 3:
        raise DecodeError("bee block: too short")
    if data[0] != FORMAT_VERSION:
        raise DecodeError(f"bee block: unknown format version {data[0]}")
    kind = data[1] & ~ROOT_FLAG
    if data[1] > (KIND_INTERNAL | ROOT_FLAG):
        raise DecodeError(f"bee block: unknown node kind {data[1]}")
    root = bool(data[1] & ROOT_FLAG)
    payload = bytes(data[2:])
    try:
        body = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises many types on garbage; convert at this boundary
        raise DecodeError(f"bee block: malformed CBOR: {exc}") from exc
    if type(body) is not list or len(body) != 2:
        raise DecodeError("bee block: body is not a two-element array")
    keys, second = body
    if type(keys) is not list or type(second) is not list:
        raise DecodeError("bee block: keys and payload must be arrays")
    if not _all_bytes(keys) or not _increasing(keys):
        raise DecodeError("bee block: keys must be byte strings in strictly increasing order")
    if kind == KIND_LEAF:
        if len(second) != len(keys) or not _all_bytes(second):
            raise DecodeError("bee block: leaf needs one byte-string value per key")
        node = Node(keys, second, None, seq, root=root)
    else:
        if not keys or len(second) != len(keys) + 1:
            raise DecodeError("bee block: internal node needs >= 1 key and one more child")
        for child in second:
            if type(child) is not int or not 0 <= child < seq:
                raise DecodeError("bee block: child must name an earlier block")
        node = Node(keys, None, second, seq, root=root)
    try:
        canonical = cbor2.dumps(body, canonical=True)
    except Exception as exc:
        raise DecodeError(f"bee block: cannot re-encode: {exc}") from exc
    if canonical != payload:
        raise DecodeError("bee block: not canonical CBOR (or trailing bytes)")
    return node


__all__ = [
    "FORMAT_VERSION",
    "KIND_INTERNAL",
    "KIND_LEAF",
    "ROOT_FLAG",
    "Node",
    "decode_node",
    "encode_node",
]
