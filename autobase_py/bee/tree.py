"""The B+ tree algorithms: lookup, range chunks, copy-on-write updates, sealing into blocks.

Theory of operation
-------------------
Everything here is synchronous and does no I/O. Stored nodes come from a ``load(address)``
callable; when a block is not available locally (a sparse replica) it raises
:class:`BlockMissing` and the async layer (``core.py``) fetches and verifies the block, then
*retries the whole operation*. Retrying is safe because every operation here either only reads,
or first *gathers* every stored node it could need (the path, and for deletes the siblings that
a rebalance might touch) and only then *mutates*; a ``BlockMissing`` can only escape from the
gather phase, before anything changed.

Copy-on-write. A :class:`TreeWriter` starts from a stored root (the last block of the log, or
nothing for an empty log). An update copies the stored nodes on its path into *dirty* nodes
(``seq is None``) that the writer owns and mutates in place, so later updates in the same batch
that pass through them change them again instead of copying them again: each changed node is
written once per flush, however many updates touched it.

Sealing. :meth:`TreeWriter.seal` walks the dirty nodes in post-order and packs them, in that
order, into blocks of about ``pack_bytes`` starting at the log's length; a node's address is
its block and slot. Children therefore always get smaller addresses than their parent and the
root is the last node of the last block: that is how a reader finds the root (the end of block
``length - 1``), and why truncating the log rolls the tree back. A dirty node whose content
equals the stored node it was copied from reuses that node instead of writing a copy, so
updates that cancel out write nothing.

Ranges are read leaf by leaf without keeping a cursor stack: each chunk descends from the root
to the leaf holding the current position and returns that leaf's entries in range; the next
position is the leaf's fence (the separator bounding it in its parent chain). A chunk is
therefore independent of the previous one, which makes retrying after a fetch trivial and lets
a batch's range keep going while the batch changes.

Shape rules: a leaf splits above ``leaf_max`` entries, an internal node above ``internal_max``
keys. A leaf split or rebalance uses as separator the shortest prefix of the right side's first
key that still exceeds the left side's last key (smaller internal nodes). A non-root node below
a quarter of its maximum borrows from or merges with an adjacent sibling; an internal root left
with one child is replaced by it. A split caused by an insert at the very end of a node keeps
the old node full (sequential keys fill nodes instead of leaving them half empty). The shape
depends only on the sequence of updates, so every peer replaying the same updates writes
byte-identical blocks.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable

from ..errors import BlockNotAvailableError
from .node import (
    MAX_SLOTS,
    SLOT_BITS,
    Node,
    encode_body,
    encode_pack,
    patch_child,
    patch_children,
)

Load = Callable[[int], Node]
DEFAULT_PACK_BYTES = 8192


class BlockMissing(BlockNotAvailableError):  # noqa: N818 - a signal as much as an error
    """A block the tree needs is not stored locally; ``seq`` names it."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"bee block {seq} is not stored locally")
        self.seq = seq


def _child(node: Node, index: int, load: Load) -> Node:
    ref = node.children[index]  # type: ignore[index]
    return ref if isinstance(ref, Node) else load(ref)


def separator(left_max: bytes, right_min: bytes) -> bytes:
    """The shortest prefix of ``right_min`` that is greater than ``left_max`` (which must be
    smaller): a valid separator between two leaves that keeps internal nodes small."""
    common = 0
    for a, b in zip(left_max, right_min, strict=False):
        if a != b:
            break
        common += 1
    return right_min[: common + 1]


def lookup(root: Node | None, key: bytes, load: Load) -> bytes | None:
    """The value stored under ``key``, or None."""
    node = root
    if node is None:
        return None
    while node.children is not None:
        ref = node.children[bisect_right(node.keys, key)]
        node = ref if isinstance(ref, Node) else load(ref)
    keys = node.keys
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        return node.values[i]  # type: ignore[index]
    return None


class RangeCursor:
    """Yields the entries inside the bounds one leaf at a time (see the module docstring)."""

    __slots__ = ("done", "gt", "gte", "lt", "lte", "pos", "pos_inclusive", "reverse")

    def __init__(
        self,
        *,
        gt: bytes | None = None,
        gte: bytes | None = None,
        lt: bytes | None = None,
        lte: bytes | None = None,
        reverse: bool = False,
    ) -> None:
        self.gt, self.gte, self.lt, self.lte = gt, gte, lt, lte
        self.reverse = reverse
        self.done = False
        if reverse:
            self.pos, self.pos_inclusive = (lte, True) if lte is not None else (lt, False)
        else:
            self.pos, self.pos_inclusive = (gte, True) if gte is not None else (gt, False)
        low = gte if gte is not None else gt
        high = lte if lte is not None else lt
        if low is not None and high is not None and (
            low > high or (low == high and (gt is not None or lt is not None))
        ):
            self.done = True

    def next_chunk(self, root: Node | None, load: Load) -> list[tuple[bytes, bytes]]:
        """The next leaf's worth of entries (possibly empty); sets ``done`` at the end."""
        if self.done:
            return []
        if root is None:
            self.done = True
            return []
        return self._backward(root, load) if self.reverse else self._forward(root, load)

    def _forward(self, root: Node, load: Load) -> list[tuple[bytes, bytes]]:
        pos = self.pos
        node = root
        high: bytes | None = None
        while node.children is not None:
            i = 0 if pos is None else bisect_right(node.keys, pos)
            if i < len(node.keys):
                high = node.keys[i]
            node = _child(node, i, load)
        keys, values = node.keys, node.values
        assert values is not None
        if pos is None:
            start = 0
        elif self.pos_inclusive:
            start = bisect_left(keys, pos)
        else:
            start = bisect_right(keys, pos)
        end = len(keys)
        upper = self.lte if self.lte is not None else self.lt
        if self.lte is not None:
            end = bisect_right(keys, self.lte)
        elif self.lt is not None:
            end = bisect_left(keys, self.lt)
        out = list(zip(keys[start:end], values[start:end], strict=True))
        if (
            end < len(keys)
            or high is None
            or (upper is not None and (high > upper or (high == upper and self.lte is None)))
        ):
            self.done = True
        else:
            self.pos, self.pos_inclusive = high, True
        return out

    def _backward(self, root: Node, load: Load) -> list[tuple[bytes, bytes]]:
        pos = self.pos
        node = root
        low: bytes | None = None
        while node.children is not None:
            if pos is None:
                i = len(node.keys)
            elif self.pos_inclusive:
                i = bisect_right(node.keys, pos)
            else:
                i = bisect_left(node.keys, pos)
            if i > 0:
                low = node.keys[i - 1]
            node = _child(node, i, load)
        keys, values = node.keys, node.values
        assert values is not None
        if pos is None:
            end = len(keys)
        elif self.pos_inclusive:
            end = bisect_right(keys, pos)
        else:
            end = bisect_left(keys, pos)
        start = 0
        lower = self.gte if self.gte is not None else self.gt
        if self.gte is not None:
            start = bisect_left(keys, self.gte)
        elif self.gt is not None:
            start = bisect_right(keys, self.gt)
        out = list(zip(keys[start:end], values[start:end], strict=True))
        out.reverse()
        if start > 0 or low is None or (lower is not None and low <= lower):
            self.done = True
        else:
            self.pos, self.pos_inclusive = low, False
        return out


class TreeWriter:
    """A batch's copy-on-write view of the tree: apply puts and deletes, then :meth:`seal`."""

    def __init__(
        self, root: Node | None, load: Load, *, leaf_max: int = 16, internal_max: int = 64
    ) -> None:
        if leaf_max < 4 or internal_max < 4:
            raise ValueError("leaf_max and internal_max must be at least 4")
        self.root = root
        self.load = load
        self.leaf_max = leaf_max
        self.internal_max = internal_max
        self.leaf_min = max(1, leaf_max // 4)
        self.internal_min = max(1, internal_max // 4)
        self.superseded: list[int] = []  # after seal: stored nodes the new blocks replace

    # -- gather ---------------------------------------------------------------------------

    def _path(self, key: bytes) -> tuple[list[Node], list[int]]:
        assert self.root is not None
        node = self.root
        path = [node]
        idxs: list[int] = []
        load = self.load
        while node.children is not None:
            i = bisect_right(node.keys, key)
            idxs.append(i)
            ref = node.children[i]
            node = ref if ref.__class__ is Node else load(ref)  # type: ignore[arg-type]
            path.append(node)
        return path, idxs

    # -- mutate ---------------------------------------------------------------------------

    def _make_dirty(self, path: list[Node], idxs: list[int]) -> list[Node]:
        root = path[0]
        if root.seq is not None:
            root = root.dirty_copy()
            self.root = root
        out = [root]
        parent = root
        for level, i in enumerate(idxs):
            child = path[level + 1]
            if child.seq is not None:
                child = child.dirty_copy()
                parent.children[i] = child  # type: ignore[index]
                if parent.marks is not None:
                    parent.marks.append(i)
            out.append(child)
            parent = child
        return out

    def _dirty_child(self, parent: Node, index: int, node: Node) -> Node:
        if node.seq is None:
            return node
        copy = node.dirty_copy()
        parent.children[index] = copy  # type: ignore[index]
        if parent.marks is not None:
            parent.marks.append(index)
        return copy

    def put(self, key: bytes, value: bytes) -> tuple[bool, bytes | None]:
        """Store ``value`` under ``key``; returns (changed, previous value or None)."""
        if self.root is None:
            self.root = Node([key], [value], None)
            return True, None
        path, idxs = self._path(key)
        leaf = path[-1]
        j = bisect_left(leaf.keys, key)
        exists = j < len(leaf.keys) and leaf.keys[j] == key
        old = leaf.values[j] if exists else None  # type: ignore[index]
        if exists and old == value:
            return False, old
        path = self._make_dirty(path, idxs)
        leaf = path[-1]
        assert leaf.values is not None
        if exists:
            leaf.values[j] = value
            return True, old
        leaf.keys.insert(j, key)
        leaf.values.insert(j, value)
        if len(leaf.keys) > self.leaf_max:
            self._split(path, idxs, at_end=j == len(leaf.keys) - 1)
        return True, None

    def _split(self, path: list[Node], idxs: list[int], *, at_end: bool) -> None:
        level = len(path) - 1
        node = path[level]
        while True:
            if node.children is None:
                assert node.values is not None
                mid = len(node.keys) - 1 if at_end else len(node.keys) // 2
                right = Node(node.keys[mid:], node.values[mid:], None)
                sep = separator(node.keys[mid - 1], right.keys[0])
                del node.keys[mid:]
                del node.values[mid:]
            else:
                mid = len(node.keys) - 2 if at_end else len(node.keys) // 2
                sep = node.keys[mid]
                right = Node(node.keys[mid + 1 :], None, node.children[mid + 1 :])
                del node.keys[mid:]
                del node.children[mid + 1 :]
                node.marks = None  # children moved: seal scans them
            if level == 0:
                self.root = Node([sep], None, [node, right])
                return
            parent = path[level - 1]
            i = idxs[level - 1]
            assert parent.children is not None
            parent.keys.insert(i, sep)
            parent.children.insert(i + 1, right)
            parent.marks = None
            at_end = at_end and i == len(parent.keys) - 1
            if len(parent.keys) <= self.internal_max:
                return
            level -= 1
            node = parent

    def delete(self, key: bytes) -> tuple[bool, bytes | None]:
        """Remove ``key``; returns (changed, previous value or None)."""
        if self.root is None:
            return False, None
        path, idxs = self._path(key)
        leaf = path[-1]
        j = bisect_left(leaf.keys, key)
        if j >= len(leaf.keys) or leaf.keys[j] != key:
            return False, None
        old = leaf.values[j]  # type: ignore[index]
        # Gather the siblings a rebalance could need, bottom-up, before changing anything.
        siblings: dict[int, Node] = {}
        shrinks = len(leaf.keys) - 1 < self.leaf_min
        level = len(path) - 1
        while level >= 1 and shrinks:
            parent = path[level - 1]
            i = idxs[level - 1]
            siblings[level] = _child(parent, i - 1 if i > 0 else i + 1, self.load)
            shrinks = len(parent.keys) - 1 < self.internal_min
            level -= 1
        path = self._make_dirty(path, idxs)
        leaf = path[-1]
        assert leaf.values is not None
        del leaf.keys[j]
        del leaf.values[j]
        level = len(path) - 1
        while level >= 1:
            node = path[level]
            minimum = self.leaf_min if node.children is None else self.internal_min
            if len(node.keys) >= minimum:
                break
            if not self._rebalance(path[level - 1], idxs[level - 1], node, siblings[level]):
                break  # borrowed: the parent kept its size
            level -= 1
        root = self.root
        assert root is not None
        if root.children is not None and not root.keys:
            only = root.children[0]
            assert isinstance(only, Node), "a collapsing root's child is the merged dirty node"
            self.root = only
        return True, old

    def _rebalance(self, parent: Node, i: int, node: Node, sibling: Node) -> bool:
        """Fix an underfull ``node`` (child ``i`` of ``parent``) with its adjacent sibling;
        True if the two merged (the parent lost a key), False if they shared entries."""
        assert parent.children is not None
        if i > 0:
            li = i - 1
            left = self._dirty_child(parent, li, sibling)
            right = node
        else:
            li = i
            left = node
            right = self._dirty_child(parent, i + 1, sibling)
        sep = parent.keys[li]
        parent.marks = left.marks = right.marks = None  # children move: seal scans them
        if left.children is None:
            assert left.values is not None and right.values is not None
            if len(left.keys) + len(right.keys) <= self.leaf_max:
                left.keys += right.keys
                left.values += right.values
                del parent.keys[li]
                del parent.children[li + 1]
                return True
            keys = left.keys + right.keys
            values = left.values + right.values
            m = len(keys) // 2
            left.keys, left.values = keys[:m], values[:m]
            right.keys, right.values = keys[m:], values[m:]
            parent.keys[li] = separator(left.keys[-1], right.keys[0])
            return False
        assert right.children is not None
        if len(left.keys) + 1 + len(right.keys) <= self.internal_max:
            left.keys += [sep, *right.keys]
            left.children += right.children
            del parent.keys[li]
            del parent.children[li + 1]
            return True
        keys = [*left.keys, sep, *right.keys]
        children = left.children + right.children
        m = len(keys) // 2
        left.keys, left.children = keys[:m], children[: m + 1]
        parent.keys[li] = keys[m]
        right.keys, right.children = keys[m + 1 :], children[m + 1 :]
        return False

    # -- seal -----------------------------------------------------------------------------

    def seal(
        self, length: int, pack_bytes: int = DEFAULT_PACK_BYTES
    ) -> tuple[list[bytes], list[Node]]:
        """Blocks to append at ``length`` (the root is the last node of the last block) and the
        nodes they store, or two empty lists when the tree equals the stored tree whose root
        ends block ``length - 1``. Nodes go into a block, in post-order, until adding the next
        one would take it past ``pack_bytes`` (a larger node gets a block of its own).

        The returned nodes already carry their addresses; they become valid only once the
        blocks are appended, so the caller must discard this writer if the append fails.
        """
        root = self.root
        if root is None:
            return [], []
        sealer = _Sealer(length, pack_bytes)
        self.superseded = sealer.superseded
        top = sealer.store(root)
        nodes = sealer.nodes
        if not nodes and top.root and top.seq >> SLOT_BITS == length - 1:  # type: ignore[operator]
            return [], []  # exactly the stored tree
        if not nodes or top is not nodes[-1]:
            # The tree collapsed back onto an older, unchanged subtree: the root must end the
            # last block and carry the root mark, so store a copy of that subtree's root.
            top = Node(top.keys, top.values, top.children)
            body = encode_body(top)
            if top.children is not None:
                top.body = body
            sealer.place(top, body)
        top.root = True
        blocks = sealer.blocks
        blocks.append(encode_pack(sealer.bodies, root=True))
        return blocks, nodes


class _Sealer:
    """One :meth:`TreeWriter.seal`: the blocks and nodes written so far, the bodies of the
    block being filled. (A class rather than nested closures: a recursive closure is a
    reference cycle, and at one seal per 1-put flush its ~17 objects per flush were most
    of the cyclic garbage the collector had to find.)"""

    __slots__ = ("blocks", "bodies", "length", "nodes", "pack_bytes", "size", "superseded")

    def __init__(self, length: int, pack_bytes: int) -> None:
        self.length = length
        self.pack_bytes = pack_bytes
        self.blocks: list[bytes] = []
        self.nodes: list[Node] = []
        self.bodies: list[bytes] = []
        self.size = 0
        self.superseded: list[int] = []

    def place(self, node: Node, body: bytes) -> None:
        """Give ``node`` the next address (starting a new block when this one is full)."""
        bodies = self.bodies
        if bodies and (
            self.size + len(body) > self.pack_bytes or len(bodies) >= MAX_SLOTS - 1
        ):
            self.blocks.append(encode_pack(bodies, root=False))
            bodies = self.bodies = []
            self.size = 0
        node.seq = (self.length + len(self.blocks)) << SLOT_BITS | len(bodies)
        bodies.append(body)
        self.size += len(body)
        self.nodes.append(node)

    def store(self, node: Node) -> Node:
        """Store the dirty subtree under ``node`` in post-order; the stored node standing for
        it (``node`` itself with its address, or the unchanged origin it was copied from)."""
        if node.seq is not None:
            return node
        children = node.children
        origin = node.origin
        node.origin = None
        if children is None:  # a leaf
            if origin is not None:
                if origin.keys == node.keys and origin.values == node.values:
                    return origin
                self.superseded.append(origin.seq)  # type: ignore[arg-type]
            self.place(node, encode_body(node))
            return node
        marks = node.marks
        node.marks = None
        if marks is not None and origin is not None:
            # Copy-on-write replaced exactly the marked children in place (nothing moved, so
            # the keys and every other child are the origin's): store them left to right (the
            # same post-order as the scan below), then splice the addresses that changed into
            # the origin's body.
            if len(marks) > 1:
                marks.sort()
            before = origin.children
            assert before is not None
            patched = origin.body
            n = len(before) - 1
            changed = False
            for i in marks:
                child = children[i]
                if child.__class__ is Node:
                    address: int = self.store(child).seq  # type: ignore[assignment]
                    children[i] = address
                    if address != before[i]:
                        changed = True
                        if patched is not None:
                            patched = patch_child(patched, n, i, address)
            if not changed:
                return origin  # every replaced child came back unchanged
            self.superseded.append(origin.seq)  # type: ignore[arg-type]
            body = encode_body(node) if patched is None else patched
            node.body = body
            self.place(node, body)
            return node
        # Typically one or two of an internal node's dozens of children are dirty: find them
        # with C-level scans rather than a Python loop over all.
        kinds = list(map(type, children))
        i = -1
        while Node in kinds:
            i = kinds.index(Node, i + 1)
            kinds[i] = int
            children[i] = self.store(children[i]).seq  # type: ignore[arg-type,assignment]
        if origin is None:
            body = encode_body(node)
        else:
            same_keys = origin.keys == node.keys
            if same_keys and origin.children == children:
                return origin
            self.superseded.append(origin.seq)  # type: ignore[arg-type]
            old_body = origin.body
            if same_keys and old_body is not None:
                # Same keys, so as many children: only addresses changed.
                body = patch_children(old_body, children)  # type: ignore[arg-type]
            else:
                body = encode_body(node)
        node.body = body
        self.place(node, body)
        return node

__all__ = ["DEFAULT_PACK_BYTES", "BlockMissing", "Load", "RangeCursor", "TreeWriter", "lookup"]
