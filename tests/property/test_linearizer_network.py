"""Stateful property test: 3-5 simulated writers, random appends, batches, acks, partial
deliveries, partitions, restarts and indexer-set changes.

After every step: the fast linearizer of every peer equals the reference linearizer fed the
same nodes (order, confirmed length, indexer set), every replayed view equals ``order()``,
confirmed prefixes only grow and are prefixes of each other across peers. The ``settle`` rule
checks liveness: heal, deliver everything, then lockstep ack waves; within the documented bound
every value is confirmed everywhere and ``should_ack`` goes quiet; a fresh linearizer fed the
same nodes in another causal order reaches the same order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from autobase_py.linearizer import Linearizer
from autobase_py.testing.dag import (
    SimNetwork,
    causal_shuffle,
    membership,
    membership_op,
    writer_keys,
)
from autobase_py.testing.reference_linearizer import ReferenceLinearizer

MAX_NODES = 60
SAVE_DIR = Path(__file__).resolve().parents[1] / "regressions" / "linearizer"


@contextlib.contextmanager
def saved_on_failure(machine: LinearizerNetwork) -> Iterator[None]:
    """With LINEARIZER_SAVE_FAILURES=1, write the failing trace as a regression case."""
    try:
        yield
    except AssertionError:
        if os.environ.get("LINEARIZER_SAVE_FAILURES") and hasattr(machine, "net"):
            net = machine.net
            case = {
                "writers": len(net.writers),
                "indexers": [net.writers.index(k) for k in net.genesis],
                "trace": net.trace,
                "note": "found by tests/property/test_linearizer_network.py",
            }
            text = json.dumps(case)
            name = hashlib.sha256(text.encode()).hexdigest()[:12]
            (SAVE_DIR / f"hypothesis-{name}.json").write_text(text)
        raise


def wave_bound(n: int) -> int:
    """docs/consensus.md: at most 2f + 4 lockstep ack waves per epoch, f < n/2 silent."""
    return 2 * ((n - 1) // 2) + 4


class LinearizerNetwork(RuleBasedStateMachine):
    @initialize(
        count=st.integers(3, 5),
        indexer_mask=st.integers(1, 31),
        seed=st.integers(0, 2**32 - 1),
        windowed=st.booleans(),
    )
    def setup(self, count: int, indexer_mask: int, seed: int, windowed: bool) -> None:
        self.keys = writer_keys(count)
        indexers = [k for i, k in enumerate(self.keys) if indexer_mask >> i & 1]
        if not indexers:
            indexers = self.keys[:1]
        # windowed: only the newest round steps stay in memory, older ones come from "storage"
        self.net = SimNetwork(self.keys, indexers, round_window=1 if windowed else None)
        self.rng = random.Random(seed)
        self.changes = 0

    def total(self) -> int:
        return len(self.net.nodes)

    @precondition(lambda self: self.total() < MAX_NODES)
    @rule(who=st.integers(0, 4), size=st.integers(1, 3))
    def append(self, who: int, size: int) -> None:
        writer = self.keys[who % len(self.keys)]
        values = [b"v%d" % (self.total() + i) for i in range(size)]
        self.net.append(writer, values)
        self.net.sync(writer)

    @precondition(lambda self: self.total() < MAX_NODES)
    @rule(who=st.integers(0, 4), mask=st.integers(0, 31))
    def change_indexers(self, who: int, mask: int) -> None:
        writer = self.keys[who % len(self.keys)]
        chosen = [k for i, k in enumerate(self.keys) if mask >> i & 1]
        # an empty set is refused by the linearizer; the op is then ignored everywhere
        self.net.append(writer, [membership_op(chosen)])
        self.changes += 1
        self.net.sync(writer)

    @rule(who=st.integers(0, 4))
    def ack(self, who: int) -> None:
        writer = self.keys[who % len(self.keys)]
        self.net.ack(writer)
        self.net.sync(writer)

    @rule(who=st.integers(0, 4), limit=st.integers(1, 6))
    def deliver(self, who: int, limit: int) -> None:
        writer = self.keys[who % len(self.keys)]
        self.net.deliver(writer, limit, self.rng)
        self.net.sync(writer)

    @rule(mask=st.integers(0, 31))
    def partition(self, mask: int) -> None:
        self.net.partition({k: mask >> i & 1 for i, k in enumerate(self.keys)})

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(who=st.integers(0, 4), with_history=st.booleans(), small=st.booleans())
    def restart(self, who: int, with_history: bool, small: bool) -> None:
        writer = self.keys[who % len(self.keys)]
        self.net.restart(writer, with_history=with_history, small=small)
        self.net.sync(writer)

    @precondition(lambda self: self.total() < MAX_NODES)
    @rule(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 12))
    def burst(self, seed: int, steps: int) -> None:
        """A run of seeded random operations: reaches deep interleavings in few rules."""
        rng = random.Random(seed)
        net = self.net
        for _ in range(steps):
            writer = rng.choice(self.keys)
            pick = rng.random()
            if pick < 0.3:
                net.append(writer, [b"b%d" % self.total()] * rng.randint(1, 2))
            elif pick < 0.5:
                net.ack(writer)
            elif pick < 0.8:
                net.deliver(writer, rng.randint(1, 5), rng)
            elif pick < 0.85:
                net.partition({k: rng.randint(0, 1) for k in self.keys})
            elif pick < 0.9:
                net.restart(writer, with_history=rng.random() < 0.5, small=rng.random() < 0.5)
            else:
                net.heal()
            net.sync(writer)
            net.check_safety()

    @rule()
    def settle(self) -> None:
        with saved_on_failure(self):
            self.settle_and_check()

    def settle_and_check(self) -> None:
        net = self.net
        net.heal()
        net.deliver_all(self.rng)
        net.sync_all()
        n = max(len(p.lin.indexers) for p in net.peers.values())
        bound = wave_bound(len(self.keys)) * (self.changes + 1) + n
        waves = 0
        in_turn = self.rng.random() < 0.5
        while any(p.lin.should_ack(k) for k, p in net.peers.items()):
            assert waves < bound, "acks did not go quiet within the bound"
            if in_turn:  # one after the other, in a random order, each seeing the last
                net.ack_in_turn(self.rng.sample(self.keys, len(self.keys)))
            else:  # all at the same moment
                net.ack_wave()
            waves += 1
        for key in self.keys:
            assert not net.unconfirmed_values(key), "values left unconfirmed after settling"
        # determinism: another causal order of the same nodes gives the same order
        peer = net.peers[self.keys[0]]
        fresh = SimNetwork([self.keys[0]], net.genesis)
        fresh.nodes = net.nodes
        for node in causal_shuffle(peer.added, self.rng):
            fresh.peers[self.keys[0]].receive(node)
        fresh.sync(self.keys[0])
        other = fresh.peers[self.keys[0]].lin
        assert other.confirmed_length == peer.lin.confirmed_length
        assert other.tip() == peer.lin.tip()
        assert fresh.peers[self.keys[0]].confirmed == peer.confirmed

    @invariant()
    def safe(self) -> None:
        if hasattr(self, "net"):
            with saved_on_failure(self):
                self.net.check_safety()

    @invariant()
    def matches_reference(self) -> None:
        if not hasattr(self, "net"):
            return
        with saved_on_failure(self):
            self.check_reference()

    def check_reference(self) -> None:
        for peer in self.net.peers.values():
            ref = ReferenceLinearizer(self.net.genesis, membership)
            for node in peer.added:
                ref.add(node)
            order, confirmed, indexers = ref.compute()
            lin: Linearizer = peer.lin
            assert lin.confirmed_length == confirmed
            assert lin.indexers == indexers
            assert peer.confirmed == order[:confirmed]
            assert lin.tip() == order[confirmed:]


LinearizerNetwork.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
test_linearizer_network = LinearizerNetwork.TestCase
