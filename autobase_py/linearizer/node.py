"""Nodes of the causal DAG and the ``Update`` a linearizer hands back.

A :class:`Node` is one block of a writer's log as the linearizer sees it: who wrote it, its
1-based position in that writer's log, the DAG heads the writer had seen, the batch countdown
and the value (``None`` for an *ack*, a vote that carries no data).

Structural rules checked by :func:`check_node` (violations raise ``InvalidNodeError``):

* ``length >= 1``; ``batch >= 1``; ``writer`` is bytes; ``value`` is bytes or ``None``;
* every head is ``(bytes, int >= 1)``; a head on the node's own writer must point strictly
  before the node (it is then redundant with the implicit own-previous dependency);
* an ack (``value is None``) has ``batch == 1`` and is never part of a batch;
* inside a batch (the previous node of the same writer had ``batch = p > 1``) the node must have
  ``batch == p - 1``, carry a value, and have no heads other than its own previous node: only
  the first node of a batch carries the batch's causal dependencies. This keeps a batch a single
  vertex of the DAG, so it can never be split by the order nor create a cycle between batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidNodeError

NodeKey = tuple[bytes, int]
"""``(writer key, 1-based length)``: the identity of a node."""


@dataclass(frozen=True, slots=True)
class Node:
    """One log entry in the DAG. ``value is None`` marks an ack (a vote, never applied)."""

    writer: bytes
    length: int
    heads: tuple[NodeKey, ...] = ()
    batch: int = 1
    value: bytes | None = None

    def __post_init__(self) -> None:
        # accept heads as any list/tuple of 2-item lists/tuples (as decoded CBOR gives them);
        # anything else is left as is for check_node to reject
        heads: object = self.heads
        if isinstance(heads, (list, tuple)):
            norm = tuple(
                tuple(h) if isinstance(h, (list, tuple)) and len(h) == 2 else h for h in heads
            )
            object.__setattr__(self, "heads", norm)

    @property
    def key(self) -> NodeKey:
        return (self.writer, self.length)

    @property
    def is_ack(self) -> bool:
        return self.value is None


@dataclass(frozen=True, slots=True)
class Update:
    """How to move a view from the previously returned order to the current one.

    Roll back the last ``undo`` entries of the previously returned order, then apply ``apply``
    in order. Both count *every* node of ``order()``, acks included: position ``i`` of the
    order is the ``i``-th node applied, whatever its kind (callers that skip acks when calling
    user code still count them). ``confirmed_length`` is the length of the confirmed prefix of
    the new order. ``settled`` is ``False`` only when ``update(settle=True)`` stopped early
    after a commit that confirmed values; call ``update`` again to continue.
    """

    undo: int
    apply: list[Node] = field(default_factory=list)
    confirmed_length: int = 0
    settled: bool = True


def check_node(node: object) -> Node:
    """Return ``node`` if it is a structurally valid :class:`Node`, else raise InvalidNodeError."""
    if not isinstance(node, Node):
        raise InvalidNodeError(f"expected a Node, got {type(node).__name__}")
    if not isinstance(node.writer, bytes) or not node.writer:
        raise InvalidNodeError("node writer must be non-empty bytes")
    if not _is_count(node.length):
        raise InvalidNodeError(f"node length must be an int >= 1, got {node.length!r}")
    if not _is_count(node.batch):
        raise InvalidNodeError(f"node batch must be an int >= 1, got {node.batch!r}")
    if node.value is not None and not isinstance(node.value, bytes):
        raise InvalidNodeError("node value must be bytes or None")
    if node.value is None and node.batch != 1:
        raise InvalidNodeError("an ack (value None) cannot be part of a batch")
    if not isinstance(node.heads, tuple):
        raise InvalidNodeError("node heads must be a tuple")
    for head in node.heads:
        if (
            not isinstance(head, tuple)
            or len(head) != 2
            or not isinstance(head[0], bytes)
            or not head[0]
            or not _is_count(head[1])
        ):
            raise InvalidNodeError(f"malformed head {head!r}")
        if head[0] == node.writer and head[1] >= node.length:
            raise InvalidNodeError(f"head {head[1]} of the node's own writer is not before it")
    return node


def trusted_node(
    writer: bytes,
    length: int,
    heads: tuple[NodeKey, ...],
    batch: int,
    value: bytes | None,
) -> Node:
    """A :class:`Node` from fields the caller already checked field by field (the base's
    ``decode_block``: heads a tuple of ``(32-byte key, int >= 1)`` pairs, ``batch >= 1``, an
    ack's batch 1), without the normalisation of ``Node(...)``: ~1 us less per node, which is
    a few percent of a value in a 100-value append. Pair it with ``Linearizer.add(node,
    trusted=True)`` only if the caller also refused a head on the node's own writer at or
    after the node (the one rule of :func:`check_node` that needs the writer)."""
    node = _new_node(Node)
    _set(node, "writer", writer)
    _set(node, "length", length)
    _set(node, "heads", heads)
    _set(node, "batch", batch)
    _set(node, "value", value)
    return node


_new_node = object.__new__
_set = object.__setattr__


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
