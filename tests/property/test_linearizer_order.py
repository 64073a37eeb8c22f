"""Order properties on random DAGs: independent of arrival order, equal to the reference; and
``Linearizer.restore`` turns any garbage into DecodeError only."""

from __future__ import annotations

import contextlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from autobase_py.encoding import decode, encode
from autobase_py.errors import DecodeError
from autobase_py.linearizer import Linearizer, Node
from autobase_py.testing.dag import causal_shuffle, writer_keys
from autobase_py.testing.reference_linearizer import ReferenceLinearizer


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], list[Node]]:
    """A random DAG: each new node names a random subset of what its writer could have seen."""
    keys = writer_keys(draw(st.integers(1, 5)))
    indexers = [k for k in keys if draw(st.booleans())] or keys[:1]
    nodes: list[Node] = []
    lengths = dict.fromkeys(keys, 0)
    for _ in range(draw(st.integers(0, 40))):
        writer = draw(st.sampled_from(keys))
        heads = []
        for other in keys:
            if other != writer and lengths[other] and draw(st.booleans()):
                heads.append((other, draw(st.integers(1, lengths[other]))))
        size = draw(st.integers(1, 3))
        ack = size == 1 and draw(st.integers(0, 3)) == 0
        for i in range(size):
            lengths[writer] += 1
            nodes.append(
                Node(
                    writer,
                    lengths[writer],
                    tuple(heads) if i == 0 else (),
                    size - i,
                    None if ack else b"%d" % len(nodes),
                )
            )
    return keys, indexers, nodes


@settings(max_examples=150)
@given(dags(), st.integers(0, 2**32 - 1))
def test_order_is_independent_of_arrival_and_matches_reference(
    dag: tuple[list[bytes], list[bytes], list[Node]], seed: int
) -> None:
    _, indexers, nodes = dag
    first = Linearizer(indexers)
    for node in nodes:
        first.add(node)
    first.update()
    second = Linearizer(indexers)
    rng = random.Random(seed)
    for node in causal_shuffle(nodes, rng):
        second.add(node)
        if rng.random() < 0.3:
            second.update()  # updating midway must not change the outcome
    second.update()
    assert first.order() == second.order()
    assert first.confirmed_length == second.confirmed_length
    ref = ReferenceLinearizer(indexers)
    for node in nodes:
        ref.add(node)
    order, confirmed, _ = ref.compute()
    assert first.order() == order
    assert first.confirmed_length == confirmed


@settings(max_examples=60)
@given(dags(), st.integers(0, 2**32 - 1))
def test_restore_midway_gives_the_same_result(
    dag: tuple[list[bytes], list[bytes], list[Node]], seed: int
) -> None:
    _, indexers, nodes = dag
    whole = Linearizer(indexers)
    for node in nodes:
        whole.add(node)
    whole.update()
    cut = random.Random(seed).randint(0, len(nodes))
    part = Linearizer(indexers)
    for node in nodes[:cut]:
        part.add(node)
    part.update()
    history = part.order()[: part.confirmed_length]
    again = Linearizer.restore(decode(encode(part.state())), history=history)
    for node in nodes[:cut]:
        if node.length > again.known_length(node.writer):
            again.add(node)
    for node in nodes[cut:]:
        again.add(node)
    again.update()
    assert again.order() == whole.order()
    assert again.confirmed_length == whole.confirmed_length


scalars = (
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.binary(max_size=40)
    | st.text(max_size=5)
)
cbor_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=200)
@given(cbor_values)
def test_restore_rejects_garbage_with_decode_error(state: object) -> None:
    with contextlib.suppress(DecodeError):
        Linearizer.restore(state)


@settings(max_examples=100)
@given(dags(), st.data())
def test_restore_rejects_mangled_states(
    dag: tuple[list[bytes], list[bytes], list[Node]], data: st.DataObject
) -> None:
    _, indexers, nodes = dag
    lin = Linearizer(indexers)
    for node in nodes:
        lin.add(node)
    lin.update()
    state = lin.state()
    field = data.draw(st.sampled_from(sorted(state)))
    state[field] = data.draw(cbor_values)
    with contextlib.suppress(DecodeError):
        Linearizer.restore(state)
