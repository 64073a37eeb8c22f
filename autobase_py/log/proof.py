"""Proofs: what a log sends so that a replica can verify blocks and newer lengths.

Theory of operation
-------------------
A replica *trusts* a set of tree nodes: every node it has stored was verified before storing,
and the roots of its current length are signed (their tree hash is covered by the writer's
signature). A proof extends that trust in two ways.

**Upgrade** ``(start, length, nodes, signature)``: "the log at ``length`` (with the proof's
fork) has this signature". The verifier knows the roots of ``start`` (its own length). Every
root of ``length`` is, recursively, either a root of ``start`` (known), a node lying wholly past
block ``start - 1`` (sent: its size and hash are in ``nodes``), or a node straddling the old end,
whose hash is computed from its two children. ``nodes`` lists the sent nodes in that depth-first,
left-to-right order, so no indices travel: they follow from ``(start, length)``. From the roots
the verifier computes the tree hash and checks the signature over the 112-byte signable. Because
the old roots are inputs, a verified upgrade also proves that the new tree extends the old one.
``start = 0`` sends the roots themselves (a fresh replica, or a replica following a new fork).

**Block** ``(index, value, nodes)``: the block and its uncles (sizes and hashes of the siblings
on the path from leaf ``2*index`` upward, nearest first). The verifier hashes upward and stops at
the first node it trusts (a stored node, or one the upgrade in the same proof made trusted); the
computed node must equal the trusted one (size and hash). Uncles past that point are unused and
ignored; a path that runs out of uncles before reaching trust is invalid.

**Range** ``(start, values, length, nodes)``: blocks ``[start, start + n)`` and the nodes
outside the range that hash it up to the roots of ``length`` (:func:`range_uncles`: under each
root over the range, the largest subtrees wholly outside it, depth-first, left to right). The
verifier recomputes every subtree inside the range from the values, combines it with those
nodes up to the roots it trusts, and compares (:func:`verify_range`). It climbs to the roots
rather than stopping at the first trusted node, so every node sent is used and checked. Range
proofs are passed in-process only (no wire form); replication sends its own ``blocks`` answer
and verifies it with the same function.

A proof carries the manifest when ``start == 0`` so that a replica that knows only the log key
can check ``hash(manifest) == key`` and learn the public key.

The functions here are pure: trust is passed in as a lookup function, so a reader can verify a
block against roots whose tree hash came from a quorum certificate instead of a signature
(:func:`verify_roots_against` + :func:`verify_block_path`).

Wire form (canonical CBOR): ``{"fork": u, "block": [index, value, [[size, hash]...]] | null,
"upgrade": [start, length, [[size, hash]...], signature] | null, "manifest": bytes | null}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import encoding
from ..errors import DecodeError, InvalidProofError
from . import flat_tree
from .merkle import Node, leaf_hash, parent_hash, tree_hash

MAX_UINT = (1 << 53) - 1
MAX_PROOF_NODES = 256

ProofNode = tuple[int, bytes]  # (size, hash)
Lookup = Callable[[int], ProofNode | None]


@dataclass(frozen=True, slots=True)
class BlockProof:
    index: int
    value: bytes
    nodes: tuple[ProofNode, ...]


@dataclass(frozen=True, slots=True)
class UpgradeProof:
    start: int
    length: int
    nodes: tuple[ProofNode, ...]
    signature: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    fork: int
    block: BlockProof | None = None
    upgrade: UpgradeProof | None = None
    manifest: bytes | None = None


@dataclass(frozen=True, slots=True)
class RangeProof:
    """Blocks ``[start, start + len(values))`` and the uncles that hash them up to the roots of
    ``length`` (``range_uncles(start, end, length)`` order), optionally with an upgrade to
    ``length`` (then ``upgrade.length == length``) and the manifest."""

    fork: int
    start: int
    values: tuple[bytes, ...]
    length: int
    nodes: tuple[ProofNode, ...]
    upgrade: UpgradeProof | None = None
    manifest: bytes | None = None


# --- encoding -------------------------------------------------------------------------------


def _nodes_out(nodes: tuple[ProofNode, ...]) -> list[list[Any]]:
    return [[size, h] for size, h in nodes]


def encode_proof(proof: Proof) -> bytes:
    block = None
    if proof.block is not None:
        b = proof.block
        block = [b.index, b.value, _nodes_out(b.nodes)]
    upgrade = None
    if proof.upgrade is not None:
        u = proof.upgrade
        upgrade = [u.start, u.length, _nodes_out(u.nodes), u.signature]
    return encoding.encode(
        {"fork": proof.fork, "block": block, "upgrade": upgrade, "manifest": proof.manifest}
    )


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT:
        raise DecodeError(f"proof: {what} must be an unsigned integer")
    return value


def _fixed(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise DecodeError(f"proof: {what} must be {size} bytes")
    return value


def _nodes_in(value: Any, what: str) -> tuple[ProofNode, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_NODES:
        raise DecodeError(f"proof: {what} must be a list of at most {MAX_PROOF_NODES} nodes")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise DecodeError(f"proof: each of {what} must be [size, hash]")
        out.append((_uint(item[0], "node size"), _fixed(item[1], 32, "node hash")))
    return tuple(out)


def decode_proof(data: bytes) -> Proof:
    """The proof in ``data``; DecodeError for anything :func:`encode_proof` cannot produce."""
    obj = encoding.expect_map(encoding.decode(data), "proof")
    if set(obj) != {"fork", "block", "upgrade", "manifest"}:
        raise DecodeError("proof: expected exactly fork, block, upgrade, manifest")
    fork = _uint(obj["fork"], "fork")
    block = None
    raw_block = obj["block"]
    if raw_block is not None:
        if not isinstance(raw_block, list) or len(raw_block) != 3:
            raise DecodeError("proof: block must be [index, value, nodes]")
        if not isinstance(raw_block[1], bytes):
            raise DecodeError("proof: block value must be bytes")
        block = BlockProof(
            _uint(raw_block[0], "block index"), raw_block[1], _nodes_in(raw_block[2], "uncles")
        )
    upgrade = None
    raw_upgrade = obj["upgrade"]
    if raw_upgrade is not None:
        if not isinstance(raw_upgrade, list) or len(raw_upgrade) != 4:
            raise DecodeError("proof: upgrade must be [start, length, nodes, signature]")
        upgrade = UpgradeProof(
            _uint(raw_upgrade[0], "upgrade start"),
            _uint(raw_upgrade[1], "upgrade length"),
            _nodes_in(raw_upgrade[2], "upgrade nodes"),
            _fixed(raw_upgrade[3], 64, "signature"),
        )
    manifest = obj["manifest"]
    if manifest is not None and not isinstance(manifest, bytes):
        raise DecodeError("proof: manifest must be bytes")
    return Proof(fork=fork, block=block, upgrade=upgrade, manifest=manifest)


# --- upgrades -------------------------------------------------------------------------------


def upgrade_walk(start: int, length: int) -> Iterator[tuple[str, int]]:
    """The derivation of ``length``'s roots from ``start``'s, as ("old"|"sent"|"join", index)
    steps in post-order: old roots and sent nodes are leaves of the walk, a join combines the
    two most recent results into their parent."""
    boundary = 2 * start

    def visit(node: int) -> Iterator[tuple[str, int]]:
        if flat_tree.right_span(node) < boundary:
            yield ("old", node)
        elif flat_tree.left_span(node) >= boundary:
            yield ("sent", node)
        else:
            kids = flat_tree.children(node)
            assert kids is not None  # a leaf cannot straddle
            yield from visit(kids[0])
            yield from visit(kids[1])
            yield ("join", node)

    for root in flat_tree.full_roots(length):
        yield from visit(root)


def derive_roots(
    start: int, length: int, nodes: tuple[ProofNode, ...], old: Lookup
) -> tuple[list[Node], list[Node]]:
    """(roots of ``length``, every new node learned) from the sent ``nodes`` and the trusted
    roots of ``start`` (``old(index)``); InvalidProofError when the nodes do not fit."""
    if length < start:
        raise InvalidProofError(f"upgrade to {length} is shorter than its start {start}")
    stack: list[Node] = []
    learned: list[Node] = []
    sent = iter(nodes)
    roots = set(flat_tree.full_roots(length))
    for step, index in upgrade_walk(start, length):
        if step == "old":
            known = old(index)
            if known is None:
                raise InvalidProofError(f"upgrade needs node {index}, which is not trusted")
            stack.append(Node(index, known[0], known[1]))
        elif step == "sent":
            item = next(sent, None)
            if item is None:
                raise InvalidProofError("upgrade carries too few nodes")
            node = Node(index, item[0], item[1])
            stack.append(node)
            learned.append(node)
        else:
            right = stack.pop()
            left = stack.pop()
            node = Node(index, left.size + right.size, parent_hash(left, right))
            stack.append(node)
            learned.append(node)
    if next(sent, None) is not None:
        raise InvalidProofError("upgrade carries too many nodes")
    assert [n.index for n in stack] == sorted(roots, key=flat_tree.left_span)
    return stack, learned


def verify_roots_against(roots: list[Node], expected_tree_hash: bytes) -> None:
    """Check roots against a tree hash trusted from elsewhere (for example a certificate)."""
    if tree_hash(roots) != expected_tree_hash:
        raise InvalidProofError("roots do not match the trusted tree hash")


# --- blocks ---------------------------------------------------------------------------------


def verify_block_path(block: BlockProof, trusted: Lookup) -> list[Node]:
    """Hash ``block`` up its uncles to the first trusted node; return the new nodes to store
    (leaf, uncles, computed parents), or raise InvalidProofError."""
    node = Node(2 * block.index, len(block.value), leaf_hash(block.value))
    learned: list[Node] = []
    uncles = iter(block.nodes)
    while True:
        known = trusted(node.index)
        if known is not None:
            if known != (node.size, node.hash):
                raise InvalidProofError(f"block {block.index} does not match node {node.index}")
            return learned
        learned.append(node)
        item = next(uncles, None)
        if item is None:
            raise InvalidProofError(f"proof of block {block.index} does not reach trusted nodes")
        sibling = Node(flat_tree.sibling(node.index), item[0], item[1])
        learned.append(sibling)
        parent = flat_tree.parent(node.index)
        if sibling.index < node.index:
            node = Node(parent, sibling.size + node.size, parent_hash(sibling, node))
        else:
            node = Node(parent, node.size + sibling.size, parent_hash(node, sibling))
        if parent >= 1 << 42:
            raise InvalidProofError("proof path climbs past any possible root")


# --- ranges ---------------------------------------------------------------------------------


def range_uncles(start: int, end: int, length: int) -> list[int]:
    """The flat indices of the nodes outside blocks ``[start, end)`` that hash the range up to
    the roots of ``length`` (the largest subtrees lying wholly outside it, under each root that
    overlaps it), depth-first, left to right."""
    if not 0 <= start < end <= length:
        raise InvalidProofError(f"range [{start}, {end}) is not inside length {length}")
    lo, hi = 2 * start, 2 * (end - 1)
    out: list[int] = []
    stack: list[int] = []
    for root in flat_tree.full_roots(length):
        if flat_tree.right_span(root) < lo or flat_tree.left_span(root) > hi:
            continue
        stack.append(root)
        while stack:
            node = stack.pop()
            left, right = flat_tree.left_span(node), flat_tree.right_span(node)
            if right < lo or left > hi:
                out.append(node)
            elif not (left >= lo and right <= hi):
                kids = flat_tree.children(node)
                assert kids is not None  # a leaf is inside or outside
                stack.append(kids[1])
                stack.append(kids[0])
    return out


NodeRow = tuple[int, int, bytes, bytes | None]  # (position, size, hash, leaf's block)


def verify_range(
    start: int,
    values: Sequence[bytes],
    anchors: Sequence[Node],
    given: Mapping[int, ProofNode],
    *,
    stored: Mapping[int, ProofNode] | None = None,
) -> list[NodeRow]:
    """Hash blocks ``[start, start + len(values))`` bottom-up once and on up to the trusted
    ``anchors`` (the roots of a length covering the range), taking the nodes outside the range
    from ``given`` (by flat index). Every anchor over the range must come out equal; every node
    of ``given`` that the range recomputes must equal it too. Returns every node learned (the
    range's subtrees, the nodes above them up to the anchors, the outside nodes used), the
    range's leaves carrying their blocks and the others None; InvalidProofError otherwise.
    Nodes of ``given`` above the anchors are ignored. Rows are keyed by the node's
    :func:`~.flat_tree.post_order` position (the storage's key). Nodes of ``given``
    used as they are in ``stored`` (what the caller stores already, by flat index) are not
    returned: rewriting a row with the same bytes would still dirty its page."""
    end = start + len(values)
    if not values:
        raise InvalidProofError("a range proof carries at least one block")
    covered = sum(flat_tree.leaf_count(a.index) for a in anchors)
    if end > covered:
        raise InvalidProofError(f"range [{start}, {end}) is past the proven length {covered}")
    blake2b = hashlib.blake2b
    # levels[d] = (offset of its first node, [(size, hash)]): the aligned subtrees of depth d
    # lying wholly inside the range.
    level: list[ProofNode] = []
    for value in values:
        size = len(value)
        level.append(
            (size, blake2b(b"\x00" + size.to_bytes(8, "little") + value, digest_size=32).digest())
        )
    base = start
    levels: list[tuple[int, list[ProofNode]]] = [(base, level)]
    while len(level) > 1:
        first = base + (base & 1)
        upper: list[ProofNode] = []
        add = upper.append
        for k in range(first - base, len(level) - 1, 2):
            left, right = level[k], level[k + 1]
            size = left[0] + right[0]
            add((size, blake2b(b"\x01" + size.to_bytes(8, "little") + left[1] + right[1],
                               digest_size=32).digest()))
        if not upper:
            break
        base, level = first >> 1, upper
        levels.append((base, level))
    lo, hi = 2 * start, 2 * (end - 1)
    above: dict[int, ProofNode] = {}  # computed nodes straddling the range's edges
    used: list[tuple[int, int, bytes]] = []

    def resolve(node: int) -> ProofNode:
        depth = ((node + 1) & -(node + 1)).bit_length() - 1
        half = (1 << depth) - 1
        if node - half >= lo and node + half <= hi:  # wholly inside
            first, nodes = levels[depth]
            return nodes[(node >> (depth + 1)) - first]
        if node + half < lo or node - half > hi:  # wholly outside
            found = given.get(node)
            if found is None:
                raise InvalidProofError(f"range proof lacks node {node}")
            if stored is None or stored.get(node) != found:
                used.append((node, found[0], found[1]))
            return found
        step = (half + 1) >> 1  # the children sit half a span either side
        a, b = resolve(node - step), resolve(node + step)
        size = a[0] + b[0]
        out = (size, blake2b(b"\x01" + size.to_bytes(8, "little") + a[1] + b[1],
                             digest_size=32).digest())
        above[node] = out
        return out

    for anchor in anchors:
        if flat_tree.right_span(anchor.index) < lo or flat_tree.left_span(anchor.index) > hi:
            continue
        if resolve(anchor.index) != (anchor.size, anchor.hash):
            raise InvalidProofError(
                f"blocks [{start}, {end}) do not match the trusted node {anchor.index}"
            )
    for index, node in given.items():
        depth = ((index + 1) & -(index + 1)).bit_length() - 1
        half = (1 << depth) - 1
        if index + half < lo or index - half > hi:
            continue
        if index - half >= lo and index + half <= hi:
            first, nodes = levels[depth]
            computed: ProofNode | None = nodes[(index >> (depth + 1)) - first]
        else:
            computed = above.get(index)
        if computed is not None and computed != node:
            raise InvalidProofError(f"node {index} does not match blocks [{start}, {end})")
    pos = flat_tree.post_order
    rows: list[NodeRow] = [(pos(i), size, digest, None) for i, size, digest in used]
    rows.extend((pos(i), size, digest, None) for i, (size, digest) in above.items())
    rows.extend(  # the leaves, with their blocks
        (2 * b - b.bit_count(), size, digest, value)
        for b, (size, digest), value in zip(range(start, end), levels[0][1], values, strict=True)
    )
    for depth, (first, nodes) in enumerate(levels[1:], 1):
        # the node of this depth over blocks [b, b + 2**depth): position 2b - popcount(b) + ...
        top = (2 << depth) - 2
        firsts = range(first << depth, (first + len(nodes)) << depth, 1 << depth)
        rows.extend(
            (2 * b - b.bit_count() + top, size, digest, None)
            for b, (size, digest) in zip(firsts, nodes, strict=True)
        )
    return rows


__all__ = [
    "BlockProof",
    "NodeRow",
    "Proof",
    "ProofNode",
    "RangeProof",
    "UpgradeProof",
    "decode_proof",
    "derive_roots",
    "encode_proof",
    "range_uncles",
    "upgrade_walk",
    "verify_block_path",
    "verify_range",
    "verify_roots_against",
]
