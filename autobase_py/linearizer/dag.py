"""The unconfirmed part of the DAG: entries, batches as units, heads, and the min-key Kahn sort.

Only unconfirmed nodes live here. A *unit* is one batch (a single node when ``batch == 1``);
the DAG is ordered unit by unit, so a batch is never split and is only exposed once its last
node (``batch == 1``) has arrived. A unit depends on the units holding its first node's
dependencies (later nodes of a batch depend only on their own previous node, see ``node.py``).

:func:`kahn` is the order of the spec: repeatedly emit the available unit with the smallest
``(writer, first length)``. Units that are incomplete, or that depend (transitively) on an
incomplete unit, are never available, so they are left out.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection

from .node import Node, NodeKey


class Entry:
    """An unconfirmed node with its bookkeeping for the current epoch."""

    __slots__ = ("clk", "deps", "node", "round", "rv", "unit")

    def __init__(self, node: Node, deps: tuple[NodeKey, ...], unit: NodeKey) -> None:
        self.node = node
        self.deps = deps  # own previous node + heads, de-duplicated
        self.unit = unit  # key of the first node of its batch
        # per indexer of the epoch: the newest length of that indexer in the past (self
        # included); only meaningful for unconfirmed targets (confirmed deps count as 0)
        self.clk: list[int] = []
        # per indexer: round of that indexer's newest node in the past (self included), or -1
        self.rv: list[int] = []  # ``clk`` and ``rv`` are never changed once placed (shared)
        self.round = -1  # the node's round when written by an indexer of the epoch


class Unit:
    """One batch: members in log order, the units it depends on, and the units depending on it."""

    __slots__ = ("children", "complete", "deps", "key", "members", "values")

    def __init__(self, key: NodeKey, deps: set[NodeKey], complete: bool, values: int) -> None:
        self.key = key
        self.members: list[NodeKey] = [key]
        self.deps = deps
        self.children: list[NodeKey] = []
        self.complete = complete
        self.values = values  # how many members carry a value (not acks)


def kahn(units: dict[NodeKey, Unit], subset: Collection[NodeKey] | None = None) -> list[NodeKey]:
    """Member keys of ``subset`` (default: every unit) in min-key topological order.

    Dependencies outside ``units`` are confirmed, hence satisfied; dependencies inside
    ``units`` but outside ``subset`` are not (callers pass down-closed subsets).
    """
    chosen: Collection[NodeKey] = units if subset is None else subset
    indegree: dict[NodeKey, int] = {}
    ready: list[NodeKey] = []
    for key in chosen:
        unit = units[key]
        count = sum(1 for dep in unit.deps if dep in chosen)
        indegree[key] = count
        if count == 0 and unit.complete:
            ready.append(key)
    heapq.heapify(ready)
    out: list[NodeKey] = []
    while ready:
        key = heapq.heappop(ready)
        unit = units[key]
        out.extend(unit.members)
        for child in unit.children:
            left = indegree.get(child)
            if left is None:
                continue
            left -= 1
            indegree[child] = left
            if left == 0 and units[child].complete:
                heapq.heappush(ready, child)
    return out


def ancestors(units: dict[NodeKey, Unit], start: NodeKey) -> set[NodeKey] | None:
    """``start`` and every unconfirmed unit in its past, or ``None`` if one is incomplete."""
    seen = {start}
    stack = [start]
    while stack:
        unit = units[stack.pop()]
        if not unit.complete:
            return None
        for dep in unit.deps:
            if dep in units and dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return seen


def normalize_deps(node: Node) -> tuple[NodeKey, ...]:
    """The node's dependencies: its own previous node plus its heads, without repeats.

    Heads on the node's own writer are implied by the previous node and dropped.
    """
    deps: list[NodeKey] = []
    if node.length > 1:
        deps.append((node.writer, node.length - 1))
    seen = set(deps)
    for head in node.heads:
        if head[0] == node.writer or head in seen:
            continue
        seen.add(head)
        deps.append(head)
    return tuple(deps)


