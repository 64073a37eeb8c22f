"""The linearizer: one deterministic order of a causal DAG, with quorum-confirmed prefixes.

Theory of operation
===================

Input: nodes of many writers' logs, added in causal order (a node's own previous node and all
its heads first). Output: ``order()`` = confirmed prefix + tip, and ``update()`` = how to move
a view from the previously returned order to the current one. ``docs/consensus.md`` has the
rule, the safety argument and the liveness bound; this header says how the code maps to it.

Order. The tip is Kahn's topological sort of the unconfirmed units (batches) that always emits
the available unit with the smallest ``(writer, first length)`` (``dag.kahn``). The confirmed
prefix only ever grows at its end.

Rounds (one epoch = one indexer set, sorted; ``n`` indexers, ``q = n // 2 + 1``). For a node
``v`` written by an indexer: ``R`` = the highest round among indexer nodes in ``v``'s past;
``round(v) = R + 1`` if the past holds round-``R`` nodes from ``q`` indexers, else ``R``
(``0`` when the past holds no indexer node). Later nodes of a batch keep the round of the
batch's first node, so a batch acts as one vertex. An indexer's *vertex* of round ``r`` is its
first node of round ``r``; its *vote* for round ``r`` is its first node of round ``>= r``.
The *leader vertex* ``L_r`` is the leader's vote for ``r`` if that node's round is ``r`` or
``r + 1`` (a leader that skipped its round by one still leads it; without this, indexers
acking one after the other can skip every leader round forever). Rounds are computed
incrementally from each node's dependencies:
``Entry.rv`` (round of each indexer's newest node in the past) is a pointwise max, so adding a
node costs ``O(deps x n)``. Confirmed dependencies are looked up in ``RoundSteps``.

Commit. Even round ``r`` has leader ``indexers[(r // 2) % n]``; ``L_r`` is *directly
committed* once ``q`` indexers have a vote for round ``r + 1`` whose past contains it
(counted once, when each vertex appears: ``Entry.clk`` answers "is ``L_r`` in the past" in
``O(1)``). ``update()`` takes the highest directly committed leader, walks down to the last
committed round collecting each highest earlier leader vertex in the current anchor's past,
and commits that chain in increasing round order: each leader appends its unconfirmed past
(whole units, Kahn order) to the confirmed prefix, and those nodes leave memory. With one
indexer every node of that indexer is a committed leader, in log order.

Epochs. ``set_indexers(keys, at=position)`` switches the indexer set right after the commit
that confirmed ``position`` (the node whose apply made the change). The switch is at that
commit for every peer, because every peer commits the same chain; ``update(settle=True)``
stops after each commit that confirmed values so that the caller can apply them and declare a
change before anything else is confirmed under the old set. The new epoch restarts rounds at 0
over the nodes still unconfirmed; their bookkeeping is recomputed once (``O(unconfirmed)``).

Memory. Unconfirmed entries and units, round tables for rounds above the last committed one,
one ``RoundSteps`` (a few integers per round per writer/indexer pair; with ``round_window`` only
the newest ones, older ones read back through ``round_lookup``), the head set (at most one per
writer) and, only with ``keep_history=True``, the keys of the confirmed prefix.
``state()`` / ``Linearizer.restore`` persist everything but the unconfirmed nodes, which the
caller re-adds from its logs (those past ``known_length(writer)``) after restoring; with
``state(steps=False)`` the round steps travel separately and incrementally
(``take_round_steps()`` rows, ``restore(round_steps=...)``).

Undo/apply counting: every node of ``order()`` counts, acks included (see ``Update``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import (
    DecodeError,
    InvalidNodeError,
    LocalError,
    MembershipError,
    MissingDependencyError,
)
from .dag import Entry, Unit, ancestors, kahn, normalize_deps
from .node import Node, NodeKey, Update, check_node
from .rounds import RoundSteps

STATE_VERSION = 1


class Linearizer:
    """Deterministic order + quorum confirmation over a causal DAG of writers' nodes."""

    def __init__(
        self,
        indexers: Sequence[bytes],
        *,
        keep_history: bool = True,
        round_window: int | None = None,
        round_lookup: Callable[[int, bytes, int], Sequence[int]] | None = None,
    ) -> None:
        """``round_window``/``round_lookup``: keep only the newest ``round_window`` round
        steps per writer/indexer in memory once handed out by ``take_round_steps()``; older
        ones are read back with ``round_lookup(epoch, writer, length)``, which must return the
        round vector of the newest stored row of that epoch and writer at or below ``length``
        (``[-1] * n`` if none)."""
        if round_window is not None and (round_lookup is None or round_window < 1):
            raise LocalError("round_window needs round_lookup and must be >= 1")
        self._round_window = round_window
        self._round_lookup = round_lookup
        self._keep_history = keep_history
        self._history: list[NodeKey] = []
        self._confirmed_length = 0
        self._epoch = 0
        self._known: dict[bytes, int] = {}  # writer -> nodes known (confirmed + in memory)
        self._confirmed: dict[bytes, int] = {}  # writer -> confirmed nodes (a log prefix)
        self._entries: dict[NodeKey, Entry] = {}  # unconfirmed, in causal (insertion) order
        self._units: dict[NodeKey, Unit] = {}
        self._heads: set[NodeKey] = set()
        self._fresh: list[Node] = []  # confirmed since the last update()
        self._returned: list[NodeKey] = []  # tip as returned by the last update()
        self._tip_cache: list[NodeKey] | None = None
        self._tip_grew_only = True  # since the last update(), the tip only grew at its end
        self._sinks: set[NodeKey] = set()  # units nothing unconfirmed depends on
        self._last_commit_start = 0
        self._steps = RoundSteps(0)  # replaced per epoch (keeping its journaling mode)
        self._set_epoch(_check_indexers(indexers))

    # --- epoch ------------------------------------------------------------------------------

    def _set_epoch(self, indexers: list[bytes]) -> None:
        self._indexers = indexers
        self._index = {key: i for i, key in enumerate(indexers)}
        self._n = len(indexers)
        self._quorum = self._n // 2 + 1
        self._steps = self._new_steps(journal=self._steps.journaling)
        self._last_round = [-1] * self._n  # round of each indexer's newest node
        self._committed_round = -2  # last committed leader round of this epoch
        self._leaders: dict[int, NodeKey] = {}
        self._votes: dict[int, int] = {}
        self._direct = -2  # highest directly committed leader round
        for entry in self._entries.values():
            self._place(entry)
        self._invalidate_tip()

    def _new_steps(self, *, journal: bool) -> RoundSteps:
        lookup = self._round_lookup
        epoch = self._epoch
        fallback = None if lookup is None else (lambda w, k: lookup(epoch, w, k))
        return RoundSteps(self._n, journal=journal, window=self._round_window, fallback=fallback)

    @property
    def indexers(self) -> list[bytes]:
        """The current indexer set, sorted."""
        return list(self._indexers)

    @property
    def epoch(self) -> int:
        """How many indexer-set changes took effect so far."""
        return self._epoch

    def set_indexers(self, indexers: Sequence[bytes], *, at: int) -> None:
        """Switch the indexer set after the commit that confirmed order position ``at``.

        Call it after applying the nodes of an ``update(settle=True)`` whose commit confirmed
        position ``at`` (the node that made the change), before the next ``update``. Every peer
        switches at that same commit. An empty set raises ``MembershipError``; so does a
        position outside the latest commit (the change would land at a point other peers do
        not share). Declaring the current set again changes nothing.
        """
        keys = _check_indexers(indexers)
        if not self._last_commit_start <= at < self._confirmed_length:
            raise MembershipError(
                f"indexer change at position {at} is outside the latest commit "
                f"[{self._last_commit_start}, {self._confirmed_length}); use update(settle=True)"
            )
        if keys == self._indexers:
            return
        self._epoch += 1
        self._set_epoch(keys)

    # --- adding nodes -----------------------------------------------------------------------

    def known_length(self, writer: bytes) -> int:
        """How many nodes of ``writer`` this linearizer has (confirmed or not)."""
        return self._known.get(writer, 0)

    def add(self, node: Node, *, trusted: bool = False) -> bool:
        """Add a node whose own previous node and heads are already added.

        Returns ``False`` for a node already known (re-adding is harmless). Raises
        ``MissingDependencyError`` if a dependency is missing and ``InvalidNodeError`` for a
        malformed node or one that conflicts with the stored node of the same key.
        ``trusted``: the caller checked the node's structure already (``trusted_node``), so
        ``check_node`` is skipped; the DAG rules below are checked either way.
        """
        if not trusted:
            check_node(node)
        writer, length = node.writer, node.length
        known = self._known.get(writer, 0)
        if length <= known:
            stored = self._entries.get(node.key)
            if stored is not None and stored.node != node:
                raise InvalidNodeError(f"conflicting node for {writer.hex()[:16]}@{length}")
            return False
        if length != known + 1:
            raise MissingDependencyError(
                f"node {writer.hex()[:16]}@{length} added before node {known + 1} of its writer"
            )
        for head in node.heads:
            if head[1] > self._known.get(head[0], 0):
                raise MissingDependencyError(
                    f"head {head[0].hex()[:16]}@{head[1]} of {writer.hex()[:16]}@{length} "
                    "is not added yet"
                )
        prev = self._entries.get((writer, length - 1)) if length > 1 else None
        if prev is not None and prev.node.batch > 1:
            if node.batch != prev.node.batch - 1 or node.value is None:
                raise InvalidNodeError(
                    f"node {length} breaks the batch countdown ({prev.node.batch} -> "
                    f"{node.batch}) or is an ack inside a batch"
                )
            if node.heads and any(head != (writer, length - 1) for head in node.heads):
                raise InvalidNodeError("only the first node of a batch may carry heads")
        else:
            prev = None  # the node opens a new unit
        key = node.key
        if prev is not None:
            # inside a batch: the only dependency is the previous node, whose unit this joins
            prev_key = (writer, length - 1)
            entry = Entry(node, (prev_key,), prev.unit)
            unit = self._units[prev.unit]
            unit.members.append(key)
            unit.complete = node.batch == 1
            unit.values += 1
            self._entries[key] = entry
            self._known[writer] = length
            self._heads.discard(prev_key)
            self._heads.add(key)
            self._place_in_batch(entry, prev)
            self._invalidate_tip()
            return True
        deps = normalize_deps(node)
        entry = Entry(node, deps, key)
        dep_units = {self._entries[d].unit for d in deps if d in self._entries}
        unit = Unit(key, dep_units, node.batch == 1, 0 if node.value is None else 1)
        self._units[key] = unit
        for dep in dep_units:
            self._units[dep].children.append(key)
        tip = self._tip_cache
        # fast path: a complete unit that depends on every sink comes after everything, so the
        # sort only grows at its end (the common case: a writer appending on top of its DAG)
        extends = (
            unit.complete
            and tip is not None
            and len(tip) == len(self._entries)
            and self._sinks <= dep_units
        )
        self._sinks -= dep_units
        self._sinks.add(key)
        self._entries[key] = entry
        self._known[writer] = length
        self._confirmed.setdefault(writer, 0)
        for dep in deps:
            self._heads.discard(dep)
        self._heads.add(key)
        self._place(entry)
        if extends:
            assert tip is not None
            tip.append(key)
        else:
            self._invalidate_tip()
        return True

    def _rv_of(self, key: NodeKey) -> list[int]:
        entry = self._entries.get(key)
        if entry is not None:
            return entry.rv
        return self._steps.lookup(key[0], key[1])

    def _place_in_batch(self, entry: Entry, prev: Entry) -> None:
        """``_place`` for a batch member: its past is its predecessor's plus itself, and it
        keeps the predecessor's round (a batch is one vertex)."""
        node = entry.node
        me = self._index.get(node.writer)
        # ``rv`` equals the predecessor's (whose ``rv[me]`` is its round, which a batch member
        # keeps), and no vector is changed once placed, so the list is shared, not copied
        entry.rv = prev.rv
        entry.round = -1
        if me is None:
            entry.clk = prev.clk
        else:
            clk = list(prev.clk)
            clk[me] = node.length
            entry.clk = clk
            entry.round = prev.round
        # no round step to record: ``rv`` is the predecessor's, and a step function only
        # changes where a round grows

    def _place(self, entry: Entry) -> None:
        """Compute the entry's clock, round vector and round; update the round tables."""
        n = self._n
        clk = [0] * n
        rv = [-1] * n
        for dep in entry.deps:
            other = self._entries.get(dep)
            if other is not None:
                clk = [a if a > b else b for a, b in zip(clk, other.clk, strict=True)]
                rv = [a if a > b else b for a, b in zip(rv, other.rv, strict=True)]
            else:
                looked = self._steps.lookup(dep[0], dep[1])
                rv = [a if a > b else b for a, b in zip(rv, looked, strict=True)]
        node = entry.node
        me = self._index.get(node.writer)
        entry.round = -1
        if me is not None:
            if entry.unit != node.key:
                rnd = self._entries[(node.writer, node.length - 1)].round
            else:
                rnd = self._round_from(rv)
            clk[me] = node.length
            rv[me] = rnd
            entry.round = rnd
            if rnd > self._last_round[me]:
                self._on_vertex(me, node.key, clk, self._last_round[me], rnd)
                self._last_round[me] = rnd
        entry.clk = clk
        entry.rv = rv
        self._steps.record(node.writer, node.length, rv)

    def _round_from(self, past_rv: list[int]) -> int:
        top = max(past_rv, default=-1)
        if top < 0:
            return 0
        holders = sum(1 for value in past_rv if value == top)
        return top + 1 if holders >= self._quorum else top

    def _leader_index(self, rnd: int) -> int:
        return (rnd // 2) % self._n

    def _on_vertex(self, me: int, key: NodeKey, clk: list[int], old: int, rnd: int) -> None:
        """The indexer's round rose from ``old`` to ``rnd`` at this node.

        The node is the indexer's first of every round in ``(old, rnd]``. It is the leader
        vertex of even round ``r`` if the indexer leads ``r`` and ``r`` is ``rnd`` or
        ``rnd - 1`` (a leader that skipped its round by one still leads it), and it is the
        indexer's vote for the leader of every even round ``r`` with ``r + 1`` in
        ``(old, rnd]``, counted if its past holds that leader vertex.
        """
        if self._n == 1:
            return
        for r in (rnd - 1, rnd):
            leads = r % 2 == 0 and self._leader_index(r) == me
            if leads and r > old and r > self._committed_round:
                self._leaders[r] = key
        for r in range(old + 1 - (old + 1) % 2, rnd, 2):  # even r with old < r + 1 <= rnd
            if r <= self._committed_round:
                continue
            leader = self._leaders.get(r)
            if leader is None or clk[self._leader_index(r)] < leader[1]:
                continue
            votes = self._votes.get(r, 0) + 1
            self._votes[r] = votes
            if votes >= self._quorum and r > self._direct:
                self._direct = r

    # --- committing -------------------------------------------------------------------------

    def _chain(self) -> list[tuple[int, NodeKey]]:
        """(round, leader vertex) pairs to commit, in increasing round order."""
        if self._direct <= self._committed_round:
            return []
        anchor_key = self._leaders[self._direct]
        chain = [(self._direct, anchor_key)]
        anchor = self._entries[anchor_key]
        for rnd in range(self._direct - 2, self._committed_round, -2):
            leader = self._leaders.get(rnd)
            if leader is not None and anchor.clk[self._leader_index(rnd)] >= leader[1]:
                chain.append((rnd, leader))
                anchor = self._entries[leader]
        chain.reverse()
        return chain

    def _commit(self, leader: NodeKey) -> int | None:
        """Confirm the leader's unit and its unconfirmed past; values confirmed, or None."""
        units = ancestors(self._units, self._entries[leader].unit)
        if units is None:
            return None  # an incomplete batch in the past: wait for it
        order = kahn(self._units, units)
        assert len(order) == sum(len(self._units[u].members) for u in units)
        start = self._confirmed_length
        values = 0
        for key in order:
            node = self._entries.pop(key).node
            if node.value is not None:
                values += 1
            self._fresh.append(node)
            if self._keep_history:
                self._history.append(key)
            self._confirmed[node.writer] = max(self._confirmed[node.writer], node.length)
        for unit in units:
            del self._units[unit]
            self._sinks.discard(unit)
        self._confirmed_length += len(order)
        self._last_commit_start = start
        self._invalidate_tip()
        return values

    def _advance(self, settle: bool) -> bool:
        """Commit what the DAG allows; False when stopped early by ``settle``."""
        if self._n == 1:
            solo = self._indexers[0]
            while self._confirmed.get(solo, 0) < self._known.get(solo, 0):
                values = self._commit((solo, self._confirmed[solo] + 1))
                if values is None:
                    return True
                if settle and values:
                    return self._confirmed[solo] >= self._known[solo]
            return True
        chain = self._chain()
        for position, (rnd, leader) in enumerate(chain):
            values = self._commit(leader)
            if values is None:
                return True
            self._committed_round = rnd
            for table in (self._leaders, self._votes):
                for old in [r for r in table if r <= rnd]:
                    del table[old]
            if settle and values and position + 1 < len(chain):
                return False
        return True

    # --- reading ----------------------------------------------------------------------------

    def _invalidate_tip(self) -> None:
        self._tip_cache = None
        self._tip_grew_only = False

    def _tip(self) -> list[NodeKey]:
        if self._tip_cache is None:
            self._tip_cache = kahn(self._units)
        return self._tip_cache

    def update(self, *, settle: bool = False) -> Update:
        """Commit what can be committed and say how the order changed since the last call."""
        settled = self._advance(settle)
        tip = self._tip()
        if not self._fresh and self._tip_grew_only:
            # nothing confirmed, the tip only grew: apply the new end, O(new nodes)
            grown = tip[len(self._returned):]
            self._returned.extend(grown)
            nodes = [self._entries[key].node for key in grown]
            return Update(0, nodes, self._confirmed_length, settled)
        self._tip_grew_only = True
        fresh, self._fresh = self._fresh, []
        new_keys = [node.key for node in fresh] + tip
        old = self._returned
        common = _common_prefix(old, new_keys)
        fresh_count = len(fresh)
        apply: list[Node] = []
        for position in range(common, len(new_keys)):
            if position < fresh_count:
                apply.append(fresh[position])
            else:
                apply.append(self._entries[new_keys[position]].node)
        self._returned = list(tip)
        return Update(len(old) - common, apply, self._confirmed_length, settled)

    def order(self) -> list[NodeKey]:
        """Confirmed prefix (from ``history_start``) + tip, every node including acks."""
        return [*self._history, *self._tip()]

    def tip(self) -> list[NodeKey]:
        """The unconfirmed part of ``order()``."""
        return list(self._tip())

    @property
    def history_start(self) -> int:
        """Order position of the first confirmed key ``order()`` still holds."""
        return self._confirmed_length - len(self._history)

    @property
    def confirmed_length(self) -> int:
        return self._confirmed_length

    def heads(self) -> list[tuple[bytes, int]]:
        """The DAG's current heads (nodes nothing depends on), sorted: heads for a new node."""
        return sorted(self._heads)

    def node(self, key: NodeKey) -> Node | None:
        """The unconfirmed node with this key, if held."""
        entry = self._entries.get(key)
        return None if entry is None else entry.node

    def should_ack(self, indexer: bytes) -> bool:
        """Would an ack from ``indexer`` (with ``heads()``) help confirm unconfirmed values?

        True only for an indexer of the current epoch, when the tip holds a value and an ack
        now would start a new round for that indexer (with one indexer: whenever the tip holds
        a value). Reflects the state after the last ``update()``.
        """
        me = self._index.get(indexer)
        if me is None:
            return False
        if not any(self._units[self._entries[key].unit].values for key in self._tip()):
            return False
        if self._n == 1:
            return True
        deps: list[NodeKey] = list(self._heads)
        own = self._known.get(indexer, 0)
        if own:
            deps.append((indexer, own))
        rv = [-1] * self._n
        for dep in deps:
            rv = [a if a > b else b for a, b in zip(rv, self._rv_of(dep), strict=True)]
        return self._round_from(rv) > self._last_round[me]

    def stats(self) -> dict[str, int]:
        """Sizes of the in-memory structures (for benchmarks and memory checks)."""
        return {
            "unconfirmed": len(self._entries),
            "units": len(self._units),
            "round_steps": self._steps.entries(),
            "round_tables": len(self._leaders) + len(self._votes),
            "history": len(self._history),
            "writers": len(self._known),
        }

    # --- persistence ------------------------------------------------------------------------

    def state(self, *, steps: bool = True) -> dict[str, Any]:
        """CBOR-encodable state of the confirmed part; see ``restore``.

        With ``steps=False`` the round steps are left out and the state stays small (its size
        depends on the number of writers only); persist ``take_round_steps()`` rows instead.
        """
        if steps and not self._steps.complete:
            raise LocalError("round steps were trimmed (round_window): use state(steps=False)")
        heads = sorted(h for h in self._heads if h[1] <= self._confirmed.get(h[0], 0))
        out: dict[str, Any] = {
            "v": STATE_VERSION,
            "epoch": self._epoch,
            "indexers": list(self._indexers),
            "confirmed_length": self._confirmed_length,
            "committed_round": self._committed_round,
            "last_commit_start": self._last_commit_start,
            "writers": [[w, self._confirmed[w]] for w in sorted(self._confirmed)],
            "heads": [[w, k] for w, k in heads],
        }
        if steps:
            out["steps"] = self._steps.encode(self._confirmed)
        return out

    def take_round_steps(self) -> list[list[Any]]:
        """Round-step rows ``[epoch, writer, length, [rounds]]`` recorded since the last call.

        For incremental persistence: append the rows to storage in the same transaction as
        ``state(steps=False)``, and pass all stored rows to ``restore(round_steps=...)``. The
        first call returns every step so far. Rows of an older epoch are obsolete (``restore``
        ignores them; the caller may delete them).
        """
        return [[self._epoch, *row] for row in self._steps.take()]

    @classmethod
    def restore(
        cls,
        state: Any,
        *,
        keep_history: bool = True,
        history: Iterable[NodeKey] | None = None,
        applied_tip: Iterable[NodeKey] = (),
        round_steps: Iterable[Any] | None = None,
        round_window: int | None = None,
        round_lookup: Callable[[int, bytes, int], Sequence[int]] | None = None,
    ) -> Linearizer:
        """Rebuild from ``state()``; then re-add every node past ``known_length(writer)``.

        ``history`` (the confirmed keys, if the caller has them) makes ``order()`` complete;
        otherwise it starts at ``history_start == confirmed_length``. ``applied_tip`` lists
        the unconfirmed keys the caller's view had applied, so the first ``update()`` undoes
        and applies relative to them. ``round_steps``: the rows of ``take_round_steps()`` when
        the state was saved with ``steps=False`` (with a ``round_window``, the newest rows of
        each writer are enough: older ones are read through ``round_lookup``).
        """
        try:
            if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
                raise DecodeError("unknown linearizer state version")
            lin = cls(
                state["indexers"],
                keep_history=keep_history,
                round_window=round_window,
                round_lookup=round_lookup,
            )
            lin._epoch = _int(state["epoch"])
            lin._confirmed_length = _int(state["confirmed_length"])
            lin._committed_round = _int(state["committed_round"])
            lin._last_commit_start = _int(state["last_commit_start"])
            for writer, length in state["writers"]:
                if not isinstance(writer, bytes):
                    raise DecodeError("writer key must be bytes")
                lin._known[writer] = lin._confirmed[writer] = _int(length)
            for writer, length in state["heads"]:
                if not isinstance(writer, bytes):
                    raise DecodeError("head key must be bytes")
                lin._heads.add((writer, _int(length)))
            if "steps" in state:
                lin._steps = RoundSteps.decode(lin._n, state["steps"])
            else:
                if round_steps is None:
                    raise DecodeError("state without steps needs round_steps rows")
                lin._steps = lin._new_steps(journal=True)
                rows = []
                for row in round_steps:
                    if not isinstance(row, list) or not row or not _is_count0(row[0]):
                        raise DecodeError("malformed round step row")
                    if row[0] == lin._epoch:
                        rows.append(row[1:])
                lin._steps.replay(rows)
                lin._steps.trim(everything=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"malformed linearizer state: {exc!r}") from exc
        except MembershipError as exc:
            raise DecodeError(f"malformed linearizer state: {exc.message}") from exc
        for i, key in enumerate(lin._indexers):
            lin._last_round[i] = lin._steps.lookup(key, lin._confirmed.get(key, 0))[i]
        if history is not None and keep_history:
            lin._history = list(history)
            if len(lin._history) != lin._confirmed_length:
                raise DecodeError("history length differs from the confirmed length")
        lin._returned = list(applied_tip)
        return lin


def _common_prefix(a: list[NodeKey], b: list[NodeKey]) -> int:
    """How many leading items ``a`` and ``b`` share: compared a slice at a time (one C-level
    comparison per 256 keys), then one by one inside the slice that differs."""
    end = min(len(a), len(b))
    start = 0
    while start < end:
        stop = min(start + 256, end)
        if a[start:stop] != b[start:stop]:
            for x, y in zip(a[start:stop], b[start:stop], strict=True):
                if x != y:
                    return start
                start += 1
        start = stop
    return end


def _check_indexers(indexers: object) -> list[bytes]:
    if isinstance(indexers, (bytes, str)) or not isinstance(indexers, Iterable):
        raise MembershipError("indexers must be a sequence of keys")
    keys = list(indexers)
    if not keys:
        raise MembershipError("the indexer set cannot be empty (the last indexer stays)")
    if not all(isinstance(key, bytes) and key for key in keys):
        raise MembershipError("indexer keys must be non-empty bytes")
    return sorted(set(keys))


def _is_count0(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"expected an integer, got {type(value).__name__}")
    return value
