"""Named linearizer scenarios, each with its DAG drawn in the docstring.

Drawings: ``A1`` is writer A's first node; ``a1`` is an ack; an arrow ``X <- Y`` means Y
depends on X (Y named X as a head, or X is Y's own previous node). Keys sort A < B < C < ...
"""

from __future__ import annotations

from autobase_py.linearizer import Linearizer, Node
from autobase_py.testing.dag import SimNetwork, writer_keys

A, B, C, D, E = writer_keys(5)


def settle(net: SimNetwork, max_waves: int = 10) -> int:
    """Heal-free: deliver within groups, then lockstep ack waves until nobody should ack."""
    net.deliver_all()
    net.sync_all()
    waves = 0
    while any(net.peers[w].lin.should_ack(w) for w in net.writers):
        assert waves < max_waves, "acks did not go quiet"
        net.ack_wave()
        waves += 1
    return waves


def values_of(keys: list[tuple[bytes, int]], net: SimNetwork) -> list[bytes]:
    return [v for k in keys if (v := net.nodes[k].value) is not None]


def test_simple_chain() -> None:
    """One writer, the only indexer: every node confirms at once.

        A1 <- A2 <- A3
    """
    lin = Linearizer([A])
    for i in range(1, 4):
        lin.add(Node(A, i, tuple(lin.heads()), 1, b"%d" % i))
        update = lin.update()
        assert update.undo == 0
        assert [n.key for n in update.apply] == [(A, i)]
        assert update.confirmed_length == i
    assert lin.order() == [(A, 1), (A, 2), (A, 3)]
    assert not lin.should_ack(A)


def test_two_writers_compete() -> None:
    """Two concurrent nodes: the smaller key goes first, whoever arrived first.

        A1        B1        (neither saw the other)
    """
    net = SimNetwork([A, B, C], [A, B, C])
    net.append(A, [b"a"])
    net.append(B, [b"b"])
    net.sync_all()
    assert net.peers[B].view == [(B, 1)]
    net.deliver(B)
    before = net.peers[B].lin.order()
    update = net.peers[B].lin.update()
    assert before == [(A, 1), (B, 1)]
    assert update.undo == 1 and [n.key for n in update.apply] == [(A, 1), (B, 1)]
    net.peers[B].view = [(A, 1), (B, 1)]
    net.deliver(A)
    net.sync_all()
    assert net.peers[A].lin.order() == net.peers[B].lin.order()


def test_reordering_of_the_tip() -> None:
    """A late concurrent node with a smaller key moves ahead of a longer fork.

        B1 <- B2 <- B3
        A1                  (concurrent with all of B, arrives last)

    Peer C had applied B1 B2 B3; after A1 it undoes 3 and applies A1 B1 B2 B3.
    """
    net = SimNetwork([A, B, C], [A, B, C])
    for _ in range(3):
        net.append(B, [b"b"])
    net.append(A, [b"a"])
    net.partition({A: 1})
    net.deliver(C)
    net.sync(C)
    assert net.peers[C].view == [(B, 1), (B, 2), (B, 3)]
    net.heal()
    net.deliver(C)
    update = net.peers[C].lin.update()
    assert update.undo == 3
    assert [n.key for n in update.apply] == [(A, 1), (B, 1), (B, 2), (B, 3)]
    assert update.confirmed_length == 0


def test_all_voted() -> None:
    """Every indexer acks in every wave; one value confirms on all peers.

        A1 <- a2,b1,c1 <- a3,b2,c2 <- ...   (each wave names all of the previous one)
    """
    net = SimNetwork([A, B, C], [A, B, C])
    net.append(A, [b"x"])
    waves = settle(net)
    assert waves <= 4
    for w in (A, B, C):
        assert (A, 1) in net.peers[w].confirmed
    net.check_safety()


def test_majority_alone_converges() -> None:
    """C is cut off; A and B keep confirming; C catches up to the same prefix.

        A1 <- B1 <- a2 <- b2 <- ...         C: C1 (alone)
    """
    net = SimNetwork([A, B, C], [A, B, C])
    net.partition({C: 1})
    net.append(A, [b"a1"])
    net.append(C, [b"c1"])
    net.deliver_all()
    net.append(B, [b"b1"])
    settle(net)
    assert {(A, 1), (B, 1)} <= set(net.peers[A].confirmed)
    assert net.peers[C].confirmed == []
    assert net.peers[C].lin.order() == [(C, 1)]
    net.heal()
    settle(net)
    for w in (A, B, C):
        assert not net.unconfirmed_values(w)
    net.check_safety()


def test_double_fork() -> None:
    """Two forks of two nodes each merge in C1.

        A1 <- A2 \\
                  C1
        B1 <- B2 /
    """
    net = SimNetwork([A, B, C], [A, B, C])
    net.append(A, [b"a1"])
    net.append(A, [b"a2"])
    net.append(B, [b"b1"])
    net.append(B, [b"b2"])
    net.deliver(C)
    net.append(C, [b"c1"])
    net.sync(C)
    assert net.peers[C].lin.order() == [(A, 1), (A, 2), (B, 1), (B, 2), (C, 1)]
    settle(net)
    assert net.peers[A].confirmed[:5] == [(A, 1), (A, 2), (B, 1), (B, 2), (C, 1)]


def test_online_majority() -> None:
    """3 of 5 indexers online keep confirming; the other two see the same prefix later.

        A1 <- B1 <- C1 <- acks of A, B, C ...      D1, E1 offline
    """
    net = SimNetwork([A, B, C, D, E], [A, B, C, D, E])
    net.partition({D: 1, E: 2})
    for w in (A, B, C, D, E):
        net.append(w, [b"v"])
    settle(net)
    assert {(A, 1), (B, 1), (C, 1)} <= set(net.peers[A].confirmed)
    assert (D, 1) not in net.peers[A].confirmed
    net.heal()
    settle(net)
    for w in (A, B, C, D, E):
        assert not net.unconfirmed_values(w)
    net.check_safety()


def test_rotating_majority() -> None:
    """The online pair rotates: {A,B}, then {B,C}, then {C,A}; each pair confirms its values.

        phase 1: A, B online      phase 2: B, C online      phase 3: C, A online
    """
    net = SimNetwork([A, B, C], [A, B, C])
    confirmed_before = 0
    for offline in (C, A, B):
        net.partition({offline: 1})
        online = [w for w in (A, B, C) if w != offline]
        for w in online:
            net.append(w, [b"v"])
        settle(net)
        for w in online:
            assert not net.unconfirmed_values(w)
            assert len(net.peers[w].confirmed) > confirmed_before
        confirmed_before = min(len(net.peers[w].confirmed) for w in online)
        net.check_safety()
    net.heal()
    settle(net)
    net.check_safety()


def test_online_minorities_confirm_nothing() -> None:
    """Every indexer alone: nodes are ordered in each tip, nothing confirms, no ack storm.

        A1 <- A2        B1 <- B2        C1 <- C2      (three islands)
    """
    net = SimNetwork([A, B, C], [A, B, C])
    net.partition({A: 0, B: 1, C: 2})
    for w in (A, B, C):
        net.append(w, [b"1"])
        net.append(w, [b"2"])
    settle(net)
    for w in (A, B, C):
        assert net.peers[w].confirmed == []
        assert net.peers[w].lin.order() == [(w, 1), (w, 2)]
        assert not net.peers[w].lin.should_ack(w)
    net.heal()
    settle(net)
    for w in (A, B, C):
        assert not net.unconfirmed_values(w)


def test_non_indexed_writer() -> None:
    """A non-indexer's node is confirmed through the indexer's ack.

        W1 <- a1        (A is the only indexer; W writes, A acks)
    """
    w = E
    net = SimNetwork([A, w], [A])
    net.append(w, [b"from w"])
    net.deliver_all()
    net.sync_all()
    assert net.peers[A].confirmed == []
    assert net.peers[A].lin.should_ack(A)
    assert not net.peers[w].lin.should_ack(w)
    settle(net)
    assert net.peers[w].confirmed[0] == (w, 1)
    assert net.peers[A].confirmed[0] == (w, 1)


def test_non_indexed_writers_with_3_of_5_indexers() -> None:
    """D and E write, A B C index (5 writers); all values confirm everywhere.

        D1   E1   <- acks of A, B, C <- ...
    """
    net = SimNetwork([A, B, C, D, E], [A, B, C])
    net.append(D, [b"d"])
    net.append(E, [b"e"])
    settle(net)
    for w in (A, B, C, D, E):
        assert {(D, 1), (E, 1)} <= set(net.peers[w].confirmed)
        assert not net.peers[w].lin.should_ack(w) or w in (A, B, C)
    net.check_safety()


def test_batches_never_split() -> None:
    """A batch is exposed only when complete and stays contiguous in the order.

        B1(batch 3) <- B2(2) <- B3(1)      A1 concurrent, key A < B
    """
    lin = Linearizer([A, B, C])
    lin.add(Node(B, 1, (), 3, b"x"))
    lin.add(Node(B, 2, (), 2, b"y"))
    assert lin.order() == []
    assert lin.update().apply == []
    lin.add(Node(A, 1, (), 1, b"a"))
    lin.add(Node(C, 1, ((B, 2),), 1, b"c"))  # names the middle of the batch
    assert lin.order() == [(A, 1)]
    lin.add(Node(B, 3, (), 1, b"z"))
    assert lin.order() == [(A, 1), (B, 1), (B, 2), (B, 3), (C, 1)]


def test_acks_never_returned_as_values() -> None:
    """Acks are in the order (they count for undo/apply) but carry no value.

        A1 <- b1 <- c1 <- a2 ...   (A writes one value, the rest are acks)
    """
    net = SimNetwork([A, B, C], [A, B, C])
    net.append(A, [b"only value"])
    settle(net)
    peer = net.peers[B]
    assert values_of(peer.view, net) == [b"only value"]
    acks = [k for k in peer.view if net.nodes[k].value is None]
    assert acks and all(net.nodes[k].is_ack for k in acks)
