"""A slow, obviously-correct linearizer written straight from the rule (docs/consensus.md).

It keeps every node and recomputes everything from scratch on each call: explicit causal-past
sets, rounds by definition, vertices, leaders, direct commits, the leader chain, the confirmed
prefix and the tip. No incremental state, no clocks, no pruning: if the fast linearizer and
this one disagree, the fast one is wrong (or the rule is, and both get fixed).

Definitions (see docs/consensus.md): an indexer's *vote* for round ``r`` is its first node of
round ``>= r``; the *leader vertex* of even round ``r`` is the leader's vote for ``r`` when that
node's round is ``r`` or ``r + 1``; it is directly committed when ``q`` indexers' votes for
round ``r + 1`` are it or hold it in their past.

Indexer-set changes are modelled by ``membership(node) -> keys | None``: a *confirmed* value
node for which it returns keys sets the indexer set to those keys (an empty set is ignored,
since the last indexer cannot be removed). The new set takes effect right after the leader
commit that confirmed the node, exactly like ``Linearizer.set_indexers``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from ..errors import MissingDependencyError
from ..linearizer.node import Node, NodeKey

Membership = Callable[[Node], Sequence[bytes] | None]


class ReferenceLinearizer:
    def __init__(self, indexers: Sequence[bytes], membership: Membership | None = None) -> None:
        self.genesis = sorted(set(indexers))
        self.membership = membership
        self.nodes: dict[NodeKey, Node] = {}

    def add(self, node: Node) -> None:
        if node.key in self.nodes:
            return
        deps = self._deps(node)
        for dep in deps:
            if dep not in self.nodes:
                raise MissingDependencyError(f"missing {dep!r}")
        self.nodes[node.key] = node

    @staticmethod
    def _deps(node: Node) -> set[NodeKey]:
        deps = {h for h in node.heads if h[0] != node.writer}
        if node.length > 1:
            deps.add((node.writer, node.length - 1))
        return deps

    def compute(self) -> tuple[list[NodeKey], int, list[bytes]]:
        """(order, confirmed length, final indexer set)."""
        nodes = self.nodes
        past: dict[NodeKey, frozenset[NodeKey]] = {}

        def past_of(key: NodeKey) -> frozenset[NodeKey]:
            # iterative to stay clear of recursion limits
            stack = [key]
            while stack:
                top = stack[-1]
                if top in past:
                    stack.pop()
                    continue
                missing = [d for d in self._deps(nodes[top]) if d not in past]
                if missing:
                    stack.extend(missing)
                    continue
                acc: set[NodeKey] = set()
                for d in self._deps(nodes[top]):
                    acc.add(d)
                    acc |= past[d]
                past[top] = frozenset(acc)
                stack.pop()
            return past[key]

        # units: a batch is its writer's nodes from a first node down to batch == 1
        unit_of: dict[NodeKey, NodeKey] = {}
        members: dict[NodeKey, list[NodeKey]] = {}
        complete: dict[NodeKey, bool] = {}
        for key in sorted(nodes):
            node = nodes[key]
            prev = nodes.get((node.writer, node.length - 1))
            if prev is not None and prev.batch > 1:
                unit = unit_of[prev.key]
            else:
                unit = key
                members[unit] = []
            unit_of[key] = unit
            members[unit].append(key)
            complete[unit] = node.batch == 1

        def unit_deps(unit: NodeKey) -> set[NodeKey]:
            return {unit_of[d] for d in self._deps(nodes[unit])}

        def kahn(units: set[NodeKey]) -> list[NodeKey]:
            ready = [u for u in units if complete[u] and not (unit_deps(u) & units)]
            heapq.heapify(ready)
            done: set[NodeKey] = set()
            out: list[NodeKey] = []
            while ready:
                u = heapq.heappop(ready)
                done.add(u)
                out.extend(members[u])
                for v in units:
                    if v in done or v in ready or not complete[v]:
                        continue
                    if (unit_deps(v) & units) <= done:
                        heapq.heappush(ready, v)
            return out

        confirmed: list[NodeKey] = []
        confirmed_units: set[NodeKey] = set()
        indexers = list(self.genesis)
        participants = set(nodes)
        blocked = False
        while not blocked:
            n = len(indexers)
            quorum = n // 2 + 1
            rounds: dict[NodeKey, int] = {}
            for key in sorted(participants, key=lambda k: len(past_of(k))):
                # sorting by past size is a topological order
                if key[0] not in indexers:
                    continue
                if unit_of[key] != key:
                    rounds[key] = rounds[(key[0], key[1] - 1)]
                    continue
                seen = [u for u in past_of(key) if u in rounds]
                if not seen:
                    rounds[key] = 0
                    continue
                top = max(rounds[u] for u in seen)
                holders = {u[0] for u in seen if rounds[u] == top}
                rounds[key] = top + 1 if len(holders) >= quorum else top

            def vote(
                writer: bytes, rnd: int, rounds: dict[NodeKey, int] = rounds
            ) -> NodeKey | None:
                """The writer's first node of round >= rnd."""
                mine = [k for k, r in rounds.items() if k[0] == writer and r >= rnd]
                return min(mine) if mine else None

            def leader_vertex(
                rnd: int, rounds: dict[NodeKey, int] = rounds, n: int = n,
                indexers: list[bytes] = indexers,
            ) -> NodeKey | None:
                """The leader's vote for rnd, if it has round rnd or rnd + 1."""
                key = vote(indexers[(rnd // 2) % n], rnd)
                return key if key is not None and rounds[key] <= rnd + 1 else None

            chain: list[NodeKey] = []
            if n == 1:
                solo = indexers[0]
                chain = sorted(
                    k for k in rounds if k[0] == solo and unit_of[k] == k
                    and k not in confirmed_units
                )
            else:
                top_round = max(rounds.values(), default=-1)
                leaders: dict[int, NodeKey] = {}
                for rnd in range(0, top_round + 1, 2):
                    leader = leader_vertex(rnd)
                    if leader is not None:
                        leaders[rnd] = leader
                direct = []
                for rnd, leader in leaders.items():
                    votes = 0
                    for x in indexers:
                        v = vote(x, rnd + 1)
                        if v is not None and (v == leader or leader in past_of(v)):
                            votes += 1
                    if votes >= quorum:
                        direct.append(rnd)
                if direct:
                    anchor = leaders[max(direct)]
                    chain = [anchor]
                    for rnd in range(max(direct) - 2, -1, -2):
                        leader = leaders.get(rnd)
                        if leader is not None and leader in past_of(anchor):
                            chain.append(leader)
                            anchor = leader
                    chain.reverse()
                    # leaders already committed are those whose unit is confirmed
                    chain = [k for k in chain if k not in confirmed_units]
            switched = False
            for leader in chain:
                wanted = {unit_of[u] for u in past_of(leader) | {leader}} - confirmed_units
                if not all(complete[u] for u in wanted):
                    blocked = True
                    break
                fresh = kahn(wanted)
                confirmed.extend(fresh)
                confirmed_units |= wanted
                current = list(indexers)
                for key in fresh:
                    node = nodes[key]
                    if node.value is None or self.membership is None:
                        continue
                    change = self.membership(node)
                    if change is not None and len(change) > 0:
                        current = sorted(set(change))
                if current != indexers:
                    indexers = current
                    participants = {k for k in nodes if unit_of[k] not in confirmed_units}
                    switched = True
                    break
            if not switched:
                break
        rest = {u for u in members if u not in confirmed_units}
        return confirmed + kahn(rest), len(confirmed), indexers
