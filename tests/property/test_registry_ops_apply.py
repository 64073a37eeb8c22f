"""Properties of the registry's apply path and decoders under hostile input.

* Whatever bytes a writer appends (garbage, truncated ops, well-formed envelopes with wrong
  requests), two peers end with byte-identical views and the same entries, neither stops, and
  everything confirms.
* Under random partitions and reorders among three indexers, every peer ends with the same
  view in which each entry sits in exactly its three index slots (no stale key).
* Record decoding of random bytes and of wrongly shaped maps raises only ``DecodeError``.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobase_py import encoding
from autobase_py.errors import DecodeError
from autobase_py.store import Store
from autobase_py.testing.sync import converge
from registry import Entry
from registry.db import Layout
from registry.ops import OpCodec
from registry.schema import load_spec
from registry.service import RegistryService

SPEC = load_spec()
CODEC = OpCodec(SPEC)
KEY = bytes([0xAA]) * 32

cbor_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**40),
    st.text(max_size=6),
    st.just("n" * 4097),
    st.binary(max_size=40),
    st.sampled_from([KEY, b"\x01" * 32]),
)
cbor_value = st.recursive(
    cbor_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "drive_key", "type", "owner", "x", "entry", "key"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=8,
)
valid_ops = st.builds(
    lambda name, t: CODEC.encode("put-entry", {"entry": Entry(name, KEY, t)}),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(["t", "u"]),
) | st.builds(lambda name: CODEC.encode("delete-entry", {"name": name}), st.sampled_from("abc"))
hostile = st.one_of(
    st.binary(max_size=60),
    st.builds(
        lambda op, req: encoding.encode({"op": op, "req": req}), st.integers(0, 3), cbor_value
    ),
    st.builds(  # a version this code knows, or a malformed one (never a newer one: that stops)
        lambda op, req, v: encoding.encode({"op": op, "req": req, "v": v}),
        st.integers(0, 3),
        cbor_value,
        st.one_of(st.integers(-1, 2), st.text(max_size=2), st.none()),
    ),
    st.builds(lambda v, cut: v[: max(0, len(v) - cut)], valid_ops, st.integers(1, 20)),
    valid_ops,
)


async def _two_peers(root: Path, values: list[bytes]) -> None:
    stores = [Store.open(root / n) for n in ("a", "b")]
    try:
        a = await RegistryService.open(stores[0])
        b = await RegistryService.open(stores[1], a.key)
        await a.add_writer(b.local_key)
        await converge([a.base, b.base])
        half = len(values) // 2
        for value in values[:half]:
            await a.base.append(value)
        for value in values[half:]:
            await b.base.append(value)
        await converge([a.base, b.base])
        assert a.base.failed is None and b.base.failed is None
        assert a.base.view_log.tree_hash() == b.base.view_log.tree_hash()
        assert [e async for e in a.view.entries()] == [e async for e in b.view.entries()]
        assert a.base.unconfirmed_values == b.base.unconfirmed_values == 0
        await a.close()
        await b.close()
    finally:
        for s in stores:
            s.close()


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(hostile, min_size=1, max_size=8))
def test_hostile_values_are_skipped_identically(values: list[bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="registry-ops-") as d:
        trio.run(_two_peers, Path(d), values)


@given(data=st.binary(max_size=120))
def test_record_decoder_raises_only_decode_error(data: bytes) -> None:
    layout = Layout(SPEC)
    with contextlib.suppress(DecodeError):
        layout.decode(data)


@given(fields=st.dictionaries(st.sampled_from(["v", "name", "drive_key", "type", "owner", "z"]),
                              cbor_value, max_size=6))
def test_record_decoder_on_wrongly_shaped_maps(fields: dict[str, Any]) -> None:
    layout = Layout(SPEC)
    try:
        entry = layout.decode(encoding.encode(fields))
    except DecodeError:
        return
    assert isinstance(entry.name, str) and len(entry.drive_key) == 32


async def _consistent(svc: RegistryService) -> None:
    """Every entry is in exactly its three index slots and no other key exists."""
    view = svc.view
    stored = [e async for e in view.entries()]
    for e in stored:
        assert e in [x async for x in view.entries_of_type(e.type)]
        assert e in [x async for x in view.entries_of_owner(e.owner)]
        first = await view.get_by_drive_key(e.drive_key)
        assert first is not None and first.name <= e.name
    keys = [k async for k, _ in view.bee.range()]
    assert len(keys) == (1 + 4 * len(stored) if keys else 0)


names = st.sampled_from(["a", "b", "c", "d"])
round_ops = st.lists(
    st.tuples(
        st.integers(0, 2),  # which node writes
        st.one_of(
            st.builds(
                lambda n, t, o, k: Entry(n, k, t, owner=o),
                names,
                st.sampled_from(["t", "u"]),
                st.sampled_from([None, "x", "y"]),
                st.sampled_from([KEY, b"\x01" * 32]),
            ),
            names,  # a delete
        ),
    ),
    min_size=1,
    max_size=4,
)


async def _partitions(root: Path, rounds: list[tuple[list[tuple[int, Any]], int]]) -> None:
    stores = [Store.open(root / n) for n in ("a", "b", "c")]
    try:
        a = await RegistryService.open(stores[0])
        b = await RegistryService.open(stores[1], a.key)
        c = await RegistryService.open(stores[2], a.key)
        nodes = [a, b, c]
        await a.add_writer(b.local_key)
        await a.add_writer(c.local_key)
        await converge([x.base for x in nodes])
        groups = [[0, 1, 2], [0, 1], [1, 2], [0, 2], [0], [1], [2]]
        for ops, group in rounds:
            for who, op in ops:
                node = nodes[who]
                if isinstance(op, Entry):
                    await node.put_entry(op)
                else:
                    await node.delete_entry(op)
            await converge([nodes[i].base for i in groups[group]])
        await converge([x.base for x in nodes])
        hashes = {x.base.view_log.tree_hash() for x in nodes}
        assert len(hashes) == 1
        for x in nodes:
            assert x.base.failed is None and x.base.unconfirmed_values == 0
            await _consistent(x)
        for x in nodes:
            await x.close()
    finally:
        for s in stores:
            s.close()


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(st.tuples(round_ops, st.integers(0, 6)), min_size=1, max_size=5))
def test_partitions_and_reorders_keep_indexes_exact(
    rounds: list[tuple[list[tuple[int, Any]], int]],
) -> None:
    with tempfile.TemporaryDirectory(prefix="registry-partitions-") as d:
        trio.run(_partitions, Path(d), rounds)
