"""Simulated writers on a simulated network, for linearizer tests and benchmarks.

:class:`SimNetwork` holds one :class:`SimPeer` per writer. Each peer has its own
``Linearizer``, the nodes it has seen (added in causal order), and a *view*: the list of keys
it got by replaying ``update()`` results (undo, then apply), which must always equal
``order()``. The network can be partitioned into groups; a peer only receives nodes that some
peer of its group already has, one causal step at a time, in any order the caller picks.

``sync`` drives a linearizer the way the base does: ``update(settle=True)`` until settled,
replaying each result into the view and declaring indexer-set changes made by confirmed
*membership ops* (values built by :func:`membership_op`) with ``set_indexers``. It also checks,
on every call, that the view equals ``order()``, that undo never reaches into the confirmed
prefix, and that the confirmed prefix only grows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..encoding import decode, encode
from ..linearizer import Linearizer, Node
from ..linearizer.node import NodeKey

MEMBERSHIP_TAG = b"indexers:"


def writer_keys(count: int) -> list[bytes]:
    """``count`` distinct 32-byte writer keys, sorted (key ``i`` is ``bytes([i + 1]) * 32``)."""
    return [bytes([i + 1]) * 32 for i in range(count)]


def membership_op(keys: Iterable[bytes]) -> bytes:
    """A value that, once confirmed, sets the indexer set to ``keys``."""
    return MEMBERSHIP_TAG + encode(sorted(keys))


def membership(node: Node) -> list[bytes] | None:
    """The indexer set a membership op names, or None for any other node."""
    if node.value is None or not node.value.startswith(MEMBERSHIP_TAG):
        return None
    keys = decode(node.value[len(MEMBERSHIP_TAG):])
    assert isinstance(keys, list)
    return [bytes(k) for k in keys]


class SimPeer:
    def __init__(self, key: bytes, lin: Linearizer) -> None:
        self.key = key
        self.lin = lin
        self.view: list[NodeKey] = []
        self.confirmed: list[NodeKey] = []
        self.known: set[NodeKey] = set()
        self.added: list[Node] = []
        self.rows: list[list[Any]] = []  # round-step rows persisted incrementally

    def round_lookup(self, epoch: int, writer: bytes, length: int) -> list[int]:
        """What a storage query over the persisted rows would answer."""
        for row in reversed(self.rows):
            if row[0] == epoch and row[1] == writer and row[2] <= length:
                return list(row[3])
        return [-1] * len(self.lin.indexers)

    def receive(self, node: Node) -> None:
        if node.key in self.known:
            return
        self.lin.add(node)
        self.known.add(node.key)
        self.added.append(node)


class SimNetwork:
    def __init__(
        self,
        writers: Sequence[bytes],
        indexers: Sequence[bytes],
        *,
        membership: Callable[[Node], Sequence[bytes] | None] | None = membership,
        keep_history: bool = True,
        round_window: int | None = None,
    ) -> None:
        self.writers = list(writers)
        self.genesis = sorted(indexers)
        self.membership = membership
        self.nodes: dict[NodeKey, Node] = {}
        self.round_window = round_window
        self.peers: dict[bytes, SimPeer] = {}
        for w in self.writers:
            peer = SimPeer(w, Linearizer(self.genesis))
            peer.lin = self._linearizer(peer, keep_history)
            self.peers[w] = peer
        self.group: dict[bytes, int] = dict.fromkeys(self.writers, 0)
        self.acks = 0
        self.values = 0
        # every operation, in a JSON-ready form that ``replay`` re-runs exactly
        self.trace: list[list[Any]] = []

    def _w(self, writer: bytes) -> int:
        return self.writers.index(writer)

    def _linearizer(self, peer: SimPeer, keep_history: bool) -> Linearizer:
        if self.round_window is None:
            return Linearizer(self.genesis, keep_history=keep_history)
        return Linearizer(
            self.genesis,
            keep_history=keep_history,
            round_window=self.round_window,
            round_lookup=peer.round_lookup,
        )

    # --- writing ----------------------------------------------------------------------------

    def append(self, writer: bytes, values: Sequence[bytes | None]) -> list[Node]:
        """Append a batch (or one node, or one ack ``[None]``) to ``writer``'s log."""
        peer = self.peers[writer]
        self.trace.append(["append", self._w(writer), [None if v is None else v.hex()
                                                       for v in values]])
        length = peer.lin.known_length(writer)
        heads = tuple(peer.lin.heads())
        out: list[Node] = []
        for i, value in enumerate(values):
            node = Node(writer, length + 1 + i, heads if i == 0 else (), len(values) - i, value)
            out.append(node)
            self.nodes[node.key] = node
            peer.receive(node)
            if value is None:
                self.acks += 1
            else:
                self.values += 1
        return out

    def ack(self, writer: bytes) -> Node | None:
        """Append an ack if the writer's linearizer says it would help."""
        if not self.peers[writer].lin.should_ack(writer):
            return None
        return self.append(writer, [None])[0]

    # --- network ----------------------------------------------------------------------------

    def partition(self, groups: dict[bytes, int]) -> None:
        self.group = {w: groups.get(w, 0) for w in self.writers}
        self.trace.append(["partition", [self.group[w] for w in self.writers]])

    def heal(self) -> None:
        self.group = dict.fromkeys(self.writers, 0)
        self.trace.append(["heal"])

    def deliverable(self, to: bytes) -> list[Node]:
        """Nodes ``to`` lacks whose dependencies it has, held by a peer of its group."""
        peer = self.peers[to]
        held: set[NodeKey] = set()
        for other in self.peers.values():
            if self.group[other.key] == self.group[to]:
                held |= other.known
        out = []
        for key in held - peer.known:
            node = self.nodes[key]
            if node.length > 1 and (node.writer, node.length - 1) not in peer.known:
                continue
            if all(h in peer.known for h in node.heads):
                out.append(node)
        return sorted(out, key=lambda n: n.key)

    def deliver(self, to: bytes, limit: int | None = None, rng: random.Random | None = None) -> int:
        """Deliver up to ``limit`` nodes (all reachable if None) to ``to``, in a random order."""
        count = 0
        got: list[list[int]] = []
        while limit is None or count < limit:
            ready = self.deliverable(to)
            if not ready:
                break
            node = rng.choice(ready) if rng is not None else ready[0]
            self.peers[to].receive(node)
            got.append([self._w(node.writer), node.length])
            count += 1
        if got:
            self.trace.append(["deliver", self._w(to), got])
        return count

    def deliver_all(self, rng: random.Random | None = None) -> None:
        for key in self.writers:
            self.deliver(key, rng=rng)
        for key in self.writers:  # a second pass catches what others received meanwhile
            self.deliver(key, rng=rng)

    # --- driving the linearizers -------------------------------------------------------------

    def sync(self, writer: bytes) -> None:
        """Run ``update(settle=True)`` to a fixpoint, replaying it into the peer's view."""
        peer = self.peers[writer]
        lin = peer.lin
        while True:
            before = lin.confirmed_length
            update = lin.update(settle=True)
            assert update.undo <= len(peer.view) - before, "undo reached into the confirmed prefix"
            del peer.view[len(peer.view) - update.undo:]
            peer.view.extend(node.key for node in update.apply)
            if lin.history_start == 0:
                assert peer.view == lin.order(), "replayed view differs from order()"
            assert update.confirmed_length == lin.confirmed_length
            change: list[bytes] | None = None
            at = -1
            if self.membership is not None:
                for position in range(before, update.confirmed_length):
                    node = self.nodes[peer.view[position]]
                    keys = self.membership(node) if node.value is not None else None
                    if keys:
                        change, at = sorted(set(keys)), position
            confirmed = peer.view[: update.confirmed_length]
            assert confirmed[: len(peer.confirmed)] == peer.confirmed, "confirmed prefix changed"
            peer.confirmed = confirmed
            switched = False
            if change is not None and change != lin.indexers:
                lin.set_indexers(change, at=at)
                switched = True
            if update.settled and not switched:
                peer.rows.extend(lin.take_round_steps())
                return

    def sync_all(self) -> None:
        for key in self.writers:
            self.sync(key)

    def restart(self, writer: bytes, *, with_history: bool = True, small: bool = False) -> None:
        """Rebuild the peer's linearizer from its persisted state plus its unconfirmed nodes.

        ``small``: the state was saved without round steps, which come from the rows the peer
        persisted incrementally (``take_round_steps``) instead.
        """
        peer = self.peers[writer]
        small = small or self.round_window is not None
        self.trace.append(["restart", self._w(writer), with_history, small])
        old = peer.lin
        peer.rows.extend(old.take_round_steps())
        state = decode(encode(old.state(steps=not small)))
        conf = old.confirmed_length
        lin = Linearizer.restore(
            state,
            history=peer.view[:conf] if with_history and old.history_start == 0 else None,
            applied_tip=peer.view[conf:],
            round_steps=decode(encode(peer.rows)) if small else None,
            round_window=self.round_window,
            round_lookup=peer.round_lookup if self.round_window is not None else None,
        )
        if not small:
            peer.rows = []  # the next take_round_steps() returns every step again
        for node in peer.added:
            if node.length > lin.known_length(node.writer):
                lin.add(node)
        peer.lin = lin

    def ack_wave(self) -> int:
        """Every indexer that should ack does so at the same moment, then all is delivered."""
        acking = [w for w in self.writers if self.peers[w].lin.should_ack(w)]
        made = [self.append(w, [None])[0] for w in acking]
        self.deliver_all()
        self.sync_all()
        return len(made)

    def ack_in_turn(self, order: Sequence[bytes] | None = None) -> int:
        """Indexers ack one after the other, each seeing the previous ack before deciding."""
        made = 0
        for writer in order if order is not None else self.writers:
            if self.peers[writer].lin.should_ack(writer):
                self.append(writer, [None])
                made += 1
                self.deliver_all()
                self.sync_all()
        return made

    # --- checks -----------------------------------------------------------------------------

    def check_safety(self) -> None:
        """Every two peers' confirmed prefixes are prefixes of one another."""
        peers = list(self.peers.values())
        for a in peers:
            for b in peers:
                short, long = sorted((a.confirmed, b.confirmed), key=len)
                assert long[: len(short)] == short, "confirmed prefixes diverged"

    def value_keys(self, writer: bytes) -> set[NodeKey]:
        return {k for k in self.peers[writer].known if self.nodes[k].value is not None}

    def unconfirmed_values(self, writer: bytes) -> set[NodeKey]:
        peer = self.peers[writer]
        return self.value_keys(writer) - set(peer.confirmed)


def replay(
    case: dict[str, Any], *, check: Callable[[SimNetwork], None] | None = None
) -> SimNetwork:
    """Re-run a recorded ``trace`` (a regression case) on a fresh network.

    ``case = {"writers": n, "indexers": [writer indices], "trace": [...]}``; every peer is
    synced after each operation and ``check`` (if given) runs after each.
    """
    keys = writer_keys(case["writers"])
    net = SimNetwork(keys, [keys[i] for i in case["indexers"]])
    for op in case["trace"]:
        kind = op[0]
        if kind == "append":
            net.append(keys[op[1]], [None if v is None else bytes.fromhex(v) for v in op[2]])
        elif kind == "deliver":
            peer = net.peers[keys[op[1]]]
            for w, length in op[2]:
                node = net.nodes[(keys[w], length)]
                assert node in net.deliverable(peer.key), "recorded delivery is not possible"
                peer.receive(node)
            net.trace.append(op)
        elif kind == "partition":
            net.partition({k: g for k, g in zip(keys, op[1], strict=True)})
        elif kind == "heal":
            net.heal()
        elif kind == "restart":
            net.restart(keys[op[1]], with_history=op[2], small=len(op) > 3 and op[3])
        else:
            raise ValueError(f"unknown operation {kind!r}")
        net.sync_all()
        if check is not None:
            check(net)
    return net


def causal_shuffle(nodes: Sequence[Node], rng: random.Random) -> list[Node]:
    """The same nodes in another random causal order."""
    pending = {n.key: n for n in nodes}
    done: set[NodeKey] = set()
    out: list[Node] = []
    while pending:
        ready = [
            n for n in pending.values()
            if (n.length == 1 or (n.writer, n.length - 1) in done)
            and all(h in done for h in n.heads)
        ]
        node = rng.choice(sorted(ready, key=lambda n: n.key))
        del pending[node.key]
        done.add(node.key)
        out.append(node)
    return out
