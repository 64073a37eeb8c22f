"""Flat-tree numbering: a binary tree laid out in one integer sequence (as Hypercore does).

Leaves sit at even indices (block ``i`` is node ``2i``); a node of depth ``d`` and offset ``o``
(its position among nodes of that depth) has index ``(o << (d + 1)) | ((1 << d) - 1)``, so the
index of a node is also the middle of the range of indices it spans. Parents are one depth up,
siblings differ in the lowest offset bit. The *roots* of a log of length ``L`` are the perfect
subtrees of ``L``'s binary form, largest first: they partition leaves ``0 .. L-1``.

Everything here is pure integer arithmetic on non-negative ints.
"""

from __future__ import annotations


def index(depth: int, offset: int) -> int:
    """The flat index of the node at ``depth`` (0 = leaf) and ``offset``."""
    return (offset << (depth + 1)) | ((1 << depth) - 1)


def depth(i: int) -> int:
    """How many levels above the leaves node ``i`` sits (its number of trailing one bits)."""
    return ((i + 1) & -(i + 1)).bit_length() - 1


def offset(i: int) -> int:
    """The position of node ``i`` among the nodes of its depth."""
    return i >> (depth(i) + 1)


def parent(i: int) -> int:
    d = depth(i)
    return index(d + 1, offset(i) >> 1)


def sibling(i: int) -> int:
    d = depth(i)
    return index(d, offset(i) ^ 1)


def children(i: int) -> tuple[int, int] | None:
    """The (left, right) children of node ``i``, or None for a leaf."""
    d = depth(i)
    if d == 0:
        return None
    o = offset(i) * 2
    return index(d - 1, o), index(d - 1, o + 1)


def left_span(i: int) -> int:
    """The left-most leaf index (flat, even) under node ``i``."""
    d = depth(i)
    return i - (1 << d) + 1


def right_span(i: int) -> int:
    """The right-most leaf index (flat, even) under node ``i``."""
    d = depth(i)
    return i + (1 << d) - 1


def leaf_count(i: int) -> int:
    """How many leaves (blocks) node ``i`` covers."""
    return 1 << depth(i)


def full_roots(length: int) -> list[int]:
    """The flat indices of the roots of a log holding ``length`` blocks, largest first."""
    if length < 0:
        raise ValueError("length must be >= 0")
    roots: list[int] = []
    start = 0  # first block not yet covered
    remaining = length
    while remaining:
        size = 1 << (remaining.bit_length() - 1)
        roots.append(index(size.bit_length() - 1, start // size))
        start += size
        remaining -= size
    return roots


def root_containing(block: int, length: int) -> int:
    """The root of a log of ``length`` blocks whose subtree holds ``block`` (< length)."""
    start = 0
    remaining = length
    while remaining:
        size = 1 << (remaining.bit_length() - 1)
        if block < start + size:
            return index(size.bit_length() - 1, start // size)
        start += size
        remaining -= size
    raise ValueError(f"block {block} is not below length {length}")


def post_order(i: int) -> int:
    """The position of node ``i`` in the order appends create nodes (post-order: each block's
    leaf, then the parents it completes). A subtree's nodes are a contiguous run of positions
    ending at its root, and the nodes of the first ``L`` blocks' complete subtrees are exactly
    positions ``< leaf_post_order(L)``."""
    d = ((i + 1) & -(i + 1)).bit_length() - 1
    first = (i >> (d + 1)) << d  # the block under its left-most leaf
    return 2 * first - first.bit_count() + (2 << d) - 2


def leaf_post_order(block: int) -> int:
    """:func:`post_order` of block ``block``'s leaf (``2 * block``)."""
    return 2 * block - block.bit_count()


def straddlers(length: int) -> list[int]:
    """Nodes with an index below ``2 * length`` whose span reaches past block ``length - 1``.

    Together with every index ``>= 2 * length`` they are exactly the nodes a truncation to
    ``length`` invalidates. At most one per depth; depth bounded by the largest index seen.
    """
    out: list[int] = []
    boundary = 2 * length  # flat index of the first leaf that is cut away
    d = 1
    while (1 << d) - 1 < boundary:  # deeper nodes all have indices >= boundary
        node = index(d, boundary >> (d + 1))
        if left_span(node) < boundary <= right_span(node) and node < boundary:
            out.append(node)
        d += 1
    return out


__all__ = [
    "children",
    "depth",
    "full_roots",
    "index",
    "leaf_count",
    "leaf_post_order",
    "left_span",
    "offset",
    "parent",
    "post_order",
    "right_span",
    "root_containing",
    "sibling",
    "straddlers",
]
