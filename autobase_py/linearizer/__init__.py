"""The causal-DAG linearizer with quorum confirmation (pure, synchronous, no I/O).

``Linearizer`` orders writers' nodes deterministically and confirms ever longer prefixes of
that order once a majority of indexers has voted; see ``core.py`` for the theory of operation
and ``docs/consensus.md`` for the rule and its safety argument.

How the base drives it (one apply cycle)::

    for node in newly_replicated_nodes_in_causal_order:
        lin.add(node)                       # Node(writer, length, heads, batch, value)
    while True:
        before = lin.confirmed_length
        u = lin.update(settle=True)          # stops after each commit that confirmed values
        undo the last u.undo applied positions (acks count as positions, with no effect)
        apply u.apply in order (skip acks, node.value is None, when calling user code;
        batches arrive whole); positions < u.confirmed_length are confirmed
        if a node confirmed in this update (order position p, before <= p < confirmed_length)
        changed the indexer set when applied:
            lin.set_indexers(new_keys, at=p)  # takes effect at this commit on every peer
            continue
        if u.settled: break
    persist, in the same transaction as the applied records: lin.state(steps=False) (small,
    CBOR-encodable) and append the rows of lin.take_round_steps() (only what is new)
    for key in my indexer keys: if lin.should_ack(key): append an ack (after a small jitter)
    new nodes name lin.heads()

Restart: ``Linearizer.restore(state, keep_history=False, applied_tip=keys the view had applied
past the confirmed prefix, round_steps=all stored rows)``, then re-add every node past
``known_length(writer)`` in causal order. Removing the last indexer is refused with
``MembershipError``.
"""

from __future__ import annotations

from .core import Linearizer
from .node import Node, NodeKey, Update

__all__ = ["Linearizer", "Node", "NodeKey", "Update"]
