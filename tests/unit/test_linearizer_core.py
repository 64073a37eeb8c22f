"""Linearizer contract: validation, typed errors, acks, availability, indexer changes, restart."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobase_py.encoding import decode, encode
from autobase_py.errors import (
    DecodeError,
    InvalidNodeError,
    LocalError,
    MembershipError,
    MissingDependencyError,
)
from autobase_py.linearizer import Linearizer, Node, Update
from autobase_py.linearizer.core import _common_prefix
from autobase_py.testing.dag import SimNetwork, membership_op, writer_keys

A, B, C, D, E = writer_keys(5)


def quiet_waves(net: SimNetwork, limit: int) -> int:
    net.deliver_all()
    net.sync_all()
    waves = 0
    while any(net.peers[w].lin.should_ack(w) for w in net.writers):
        assert waves < limit, "acks did not go quiet within the bound"
        net.ack_wave()
        waves += 1
    return waves


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node",
    [
        Node(A, 0),
        Node(A, 1, (), 0, b"x"),
        Node(A, 1, (), 2, None),  # an ack inside a batch
        Node(A, 1, ((A, 1),), 1, b"x"),  # head on itself
        Node(A, 1, ((B, 0),), 1, b"x"),
        Node(A, 1, (("b", 1),), 1, b"x"),  # type: ignore[arg-type]
        Node(b"", 1),
        Node(A, True),
        Node(A, 1, (), 1, "text"),  # type: ignore[arg-type]
        Node(A, 1, "heads", 1, b"x"),  # type: ignore[arg-type]
        Node(A, 1, ((B, 1, 2),), 1, b"x"),  # type: ignore[arg-type]
    ],
)
def test_malformed_nodes_are_rejected(node: Node) -> None:
    lin = Linearizer([A])
    with pytest.raises(InvalidNodeError):
        lin.add(node)
    assert lin.order() == []


def test_heads_given_as_lists_are_accepted() -> None:
    lin = Linearizer([A])
    lin.add(Node(B, 1, (), 1, b"b"))
    node = Node(A, 1, [[B, 1]], 1, b"x")  # type: ignore[arg-type]
    assert node.heads == ((B, 1),)
    lin.add(node)
    assert lin.order() == [(B, 1), (A, 1)]


def test_batch_rules() -> None:
    lin = Linearizer([A])
    lin.add(Node(A, 1, (), 3, b"x"))
    with pytest.raises(InvalidNodeError):
        lin.add(Node(A, 2, (), 1, b"y"))  # countdown skips 2
    with pytest.raises(InvalidNodeError):
        lin.add(Node(A, 2, (), 2, None))  # ack inside the batch
    lin2 = Linearizer([A, B])
    lin2.add(Node(B, 1, (), 1, b"b"))
    lin2.add(Node(A, 1, (), 2, b"x"))
    with pytest.raises(InvalidNodeError):
        lin2.add(Node(A, 2, ((B, 1),), 1, b"y"))  # heads inside a batch
    lin2.add(Node(A, 2, ((A, 1),), 1, b"y"))  # naming its own previous node is fine
    assert lin2.order() == [(A, 1), (A, 2), (B, 1)]


def test_missing_dependencies() -> None:
    lin = Linearizer([A, B])
    with pytest.raises(MissingDependencyError):
        lin.add(Node(A, 2, (), 1, b"x"))
    with pytest.raises(MissingDependencyError):
        lin.add(Node(A, 1, ((B, 1),), 1, b"x"))
    lin.add(Node(A, 1, (), 1, b"x"))
    assert lin.add(Node(A, 1, (), 1, b"x")) is False  # re-adding is harmless
    with pytest.raises(InvalidNodeError):
        lin.add(Node(A, 1, (), 1, b"other"))  # but a different node under the same key is not


def test_membership_errors() -> None:
    with pytest.raises(MembershipError):
        Linearizer([])
    with pytest.raises(MembershipError):
        Linearizer(A)  # a single key, not a sequence
    with pytest.raises(MembershipError):
        Linearizer([A, b""])
    lin = Linearizer([A])
    lin.add(Node(A, 1, (), 1, b"x"))
    lin.update()
    with pytest.raises(MembershipError):
        lin.set_indexers([], at=0)
    with pytest.raises(MembershipError):
        lin.set_indexers([B], at=1)  # position not confirmed yet
    lin.add(Node(A, 2, (), 1, b"y"))
    lin.update()
    with pytest.raises(MembershipError):
        lin.set_indexers([B], at=0)  # an older commit: other peers may have moved on
    lin.set_indexers([A, B], at=1)
    assert lin.indexers == [A, B] and lin.epoch == 1


# --- ordering and acks ------------------------------------------------------------------------


def test_update_counts_acks_and_undoes_only_the_tip() -> None:
    lin = Linearizer([A, B, C])
    lin.add(Node(B, 1, (), 1, b"b"))
    first = lin.update()
    assert first == Update(0, [Node(B, 1, (), 1, b"b")], 0, True)
    lin.add(Node(A, 1, (), 1, None))  # an ack with a smaller key lands first
    second = lin.update()
    assert second.undo == 1
    assert [n.key for n in second.apply] == [(A, 1), (B, 1)]
    assert second.apply[0].is_ack


def test_should_ack_is_quiet_without_values() -> None:
    lin = Linearizer([A, B, C])
    assert not lin.should_ack(A)
    lin.add(Node(A, 1, (), 1, None))
    lin.update()
    assert not any(lin.should_ack(w) for w in (A, B, C))  # only acks unconfirmed
    lin.add(Node(D, 1, ((A, 1),), 1, b"value"))
    lin.update()
    assert lin.should_ack(B) and lin.should_ack(C)
    assert not lin.should_ack(D)  # not an indexer


@pytest.mark.parametrize("seed", range(40))
def test_simultaneous_acks_always_confirm(seed: int) -> None:
    """Every indexer acks at the same instant, every head is an ack: never a hang."""
    rng = random.Random(seed)
    count = rng.choice([3, 4, 5])
    keys = writer_keys(count)
    indexers = keys[: rng.choice([k for k in (1, 2, 3, 4, 5) if k <= count])]
    net = SimNetwork(keys, indexers)
    for _ in range(rng.randint(1, 6)):
        net.append(rng.choice(keys), [b"v"] * rng.randint(1, 2))
    net.deliver_all(rng)
    net.sync_all()
    bound = 2 * ((len(indexers) - 1) // 2) + 4
    waves = 0
    while True:
        acking = [w for w in indexers if net.peers[w].lin.should_ack(w)]
        if not acking:
            break
        # all acks are created from the same DAG before anyone sees another's ack
        net.ack_wave()
        waves += 1
        assert waves <= bound
    for w in keys:
        assert not net.unconfirmed_values(w)
    net.check_safety()


@pytest.mark.parametrize("seed", range(40))
def test_acks_in_turn_always_confirm(seed: int) -> None:
    """Indexers ack one after the other (each sees the previous ack): leaders are never all
    skipped, so values confirm within the bound."""
    rng = random.Random(seed)
    keys = writer_keys(rng.choice([3, 4, 5]))
    indexers = keys[: rng.randint(2, len(keys))]
    net = SimNetwork(keys, indexers)
    for _ in range(30):
        net.append(rng.choice(keys), [b"v"])
        net.deliver_all(rng)
        net.sync_all()
        if rng.random() < 0.3:
            net.ack_in_turn(rng.sample(keys, len(keys)))
    waves = 0
    while any(net.peers[w].lin.should_ack(w) for w in keys):
        net.ack_in_turn(rng.sample(keys, len(keys)))
        waves += 1
        assert waves <= 2 * ((len(indexers) - 1) // 2) + 4
    for w in keys:
        assert not net.unconfirmed_values(w)
    net.check_safety()


def test_ack_fraction_stays_small_with_steady_values() -> None:
    rng = random.Random(7)
    net = SimNetwork([A, B, C], [A, B, C])
    for _ in range(300):
        net.append(rng.choice([A, B, C]), [b"v"])
        net.deliver_all()
        net.sync_all()
        if rng.random() < 0.3:  # indexers ack after a jitter, when still useful
            for w in (A, B, C):
                net.ack(w)
    quiet_waves(net, 6)
    assert net.acks < net.values  # acks are a fraction of the values, not a multiple


# --- availability -------------------------------------------------------------------------------


def test_availability_promise_with_three_indexers() -> None:
    net = SimNetwork([A, B, C], [A, B, C])
    net.partition({C: 1})  # one silent: confirmation continues
    net.append(A, [b"one down"])
    quiet_waves(net, 6)
    assert (A, 1) in net.peers[A].confirmed and (A, 1) in net.peers[B].confirmed
    net.partition({B: 1, C: 2})  # two silent: accepted and ordered, not confirmed
    confirmed = list(net.peers[A].confirmed)
    made = net.append(A, [b"two down 1"]) + net.append(A, [b"two down 2"])
    quiet_waves(net, 6)
    assert net.peers[A].confirmed == confirmed
    assert net.peers[A].lin.tip()[-2:] == [n.key for n in made]
    net.heal()  # they return: everything confirms
    quiet_waves(net, 6)
    for w in (A, B, C):
        assert not net.unconfirmed_values(w)
    net.check_safety()


# --- indexer-set changes ------------------------------------------------------------------------


def test_indexer_change_mid_run_keeps_safety_and_liveness() -> None:
    net = SimNetwork([A, B, C, D], [A, B, C])
    net.append(D, [b"before"])
    quiet_waves(net, 6)
    net.append(A, [membership_op([B, C, D])])  # A steps down, D becomes an indexer
    quiet_waves(net, 12)
    for w in (A, B, C, D):
        assert net.peers[w].lin.indexers == [B, C, D]
        assert net.peers[w].lin.epoch == 1
    net.partition({A: 1})  # the old indexer going away no longer matters
    net.append(D, [b"after"])
    net.append(A, [b"from the removed one"])
    quiet_waves(net, 6)
    assert not net.unconfirmed_values(D)
    assert not net.peers[A].lin.should_ack(A)
    net.heal()
    quiet_waves(net, 6)
    for w in (A, B, C, D):
        assert not net.unconfirmed_values(w)
    net.check_safety()


def test_removing_the_last_indexer_is_refused_everywhere() -> None:
    net = SimNetwork([A, B], [A])
    net.append(B, [membership_op([])])
    quiet_waves(net, 4)  # the empty set is refused; the op changes nothing
    assert net.peers[A].lin.indexers == [A] and net.peers[B].lin.indexers == [A]
    with pytest.raises(MembershipError):
        net.peers[A].lin.set_indexers([], at=net.peers[A].lin.confirmed_length - 1)


# --- restart --------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 1, 3])
def test_restart_continues_like_a_twin(window: int | None) -> None:
    rng = random.Random(3)
    keys = [A, B, C, D]
    net = SimNetwork(keys, [A, B, C], round_window=window)
    twin = SimNetwork(keys, [A, B, C])
    for step in range(120):
        writer = rng.choice(keys)
        if rng.random() < 0.6:
            made = net.append(writer, [b"%d" % step] * rng.randint(1, 2))
        else:
            made = net.append(writer, [None]) if net.peers[writer].lin.should_ack(writer) else []
        for node in made:
            twin.nodes[node.key] = node
            twin.peers[writer].receive(node)
        if rng.random() < 0.5:
            net.deliver_all()
            twin.deliver_all()
        net.sync_all()
        twin.sync_all()
        if step % 17 == 0:
            net.restart(
                rng.choice(keys), with_history=rng.random() < 0.5, small=rng.random() < 0.5
            )
            net.sync_all()
    for w in keys:
        assert net.peers[w].confirmed == twin.peers[w].confirmed
        assert net.peers[w].lin.tip() == twin.peers[w].lin.tip()
        assert net.peers[w].view == twin.peers[w].view
    if window is not None:  # memory holds at most `window` steps per writer/indexer pair
        assert net.peers[A].lin.stats()["round_steps"] <= window * len(keys) * 3


def test_round_window_needs_a_lookup() -> None:
    with pytest.raises(LocalError):
        Linearizer([A], round_window=4)
    lin = Linearizer([A], round_window=1, round_lookup=lambda e, w, k: [-1])
    for i in range(1, 5):
        lin.add(Node(A, i, (), 1, b"x"))
    lin.update()
    lin.take_round_steps()
    with pytest.raises(LocalError):
        lin.state()  # steps were trimmed: only the small state makes sense


def test_state_is_cbor_and_small() -> None:
    net = SimNetwork([A, B, C], [A, B, C], keep_history=False)
    for i in range(200):
        net.append([A, B, C][i % 3], [b"v"])
        quiet_waves(net, 6)
    lin = net.peers[A].lin
    state = lin.state()
    assert decode(encode(state)) == state
    stats = lin.stats()
    assert stats["unconfirmed"] < 20 and stats["history"] == 0
    restored = Linearizer.restore(decode(encode(state)), keep_history=False)
    assert restored.confirmed_length == lin.confirmed_length
    assert restored.history_start == lin.confirmed_length


def test_small_state_with_incremental_round_steps() -> None:
    net = SimNetwork([A, B, C], [A, B, C], keep_history=False)
    sizes = []
    for i in range(300):
        net.append([A, B, C][i % 3], [b"v"])
        quiet_waves(net, 6)
        if i % 100 == 99:
            sizes.append(len(encode(net.peers[A].lin.state(steps=False))))
    assert max(sizes) - min(sizes) < 16  # the small state does not grow with history
    assert len(encode(net.peers[A].lin.state())) > 10 * sizes[0]  # the full one does
    lin = net.peers[A].lin
    rows = net.peers[A].rows + lin.take_round_steps()
    again = Linearizer.restore(decode(encode(lin.state(steps=False))), round_steps=rows)
    assert again.stats()["round_steps"] == lin.stats()["round_steps"]
    with pytest.raises(DecodeError):
        Linearizer.restore(lin.state(steps=False))  # the rows are required
    with pytest.raises(DecodeError):
        Linearizer.restore(lin.state(steps=False), round_steps=[[0, A, 1, [0]]])


@pytest.mark.parametrize(
    "state",
    [None, 1, b"x", {}, {"v": 2}, {"v": 1}, {"v": 1, "indexers": []},
     {"v": 1, "indexers": [A], "epoch": "0"}],
)
def test_restore_rejects_malformed_state(state: object) -> None:
    with pytest.raises(DecodeError):
        Linearizer.restore(state)


@given(
    st.lists(st.integers(0, 3), max_size=700),
    st.lists(st.integers(0, 3), max_size=700),
    st.integers(0, 700),
)
def test_common_prefix_matches_the_plain_loop(a: list[int], b: list[int], shared: int) -> None:
    left = [(b"w", x) for x in a]
    right = left[:shared] + [(b"w", x) for x in b]
    expected = 0
    for x, y in zip(left, right, strict=False):
        if x != y:
            break
        expected += 1
    assert _common_prefix(left, right) == expected == _common_prefix(right, left)
