"""Merkle rules and flat-tree numbering against the vectors produced by the real Hypercore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autobase_py import crypto
from autobase_py.errors import DecodeError
from autobase_py.log import Log, Manifest, flat_tree, merkle
from autobase_py.storage import Storage


@pytest.fixture
def vector_log(tmp_path: Path, hypercore_vectors: dict[str, Any]) -> Log:
    storage = Storage.open(tmp_path / "s")
    log = Log.create(storage, crypto.key_pair(bytes.fromhex(hypercore_vectors["seed"])))
    log.append([b"a", b"b", b"c"])
    return log


def test_namespace_constants(hypercore_vectors: dict[str, Any]) -> None:
    names = [merkle.TREE, merkle.REPLICATE_INITIATOR, merkle.REPLICATE_RESPONDER, merkle.MANIFEST,
             merkle.DEFAULT_NAMESPACE, merkle.DEFAULT_ENCRYPTION]
    assert [n.hex() for n in names] == hypercore_vectors["ns_hypercore"]
    assert merkle.DEFAULT_NAMESPACE.hex() == hypercore_vectors["manifest"]["signers"][0]["ns"]


def test_manifest_encoding_and_key(hypercore_vectors: dict[str, Any]) -> None:
    kp = crypto.key_pair(bytes.fromhex(hypercore_vectors["seed"]))
    manifest = Manifest.single(kp.public_key)
    encoded = manifest.encode()
    assert encoded == bytes.fromhex("010000010100") + merkle.DEFAULT_NAMESPACE + kp.public_key
    assert manifest.key().hex() == hypercore_vectors["coreKey"]
    assert Manifest.decode(encoded) == manifest
    assert crypto.discovery_key(manifest.key()).hex() == hypercore_vectors["discoveryKey"]


def test_leaf_hash(hypercore_vectors: dict[str, Any]) -> None:
    assert merkle.leaf_hash(b"hello").hex() == hypercore_vectors["leaf_hello"]


def test_log_reproduces_tree_hash_signable_and_signature(
    vector_log: Log, hypercore_vectors: dict[str, Any]
) -> None:
    v = hypercore_vectors
    assert vector_log.key.hex() == v["coreKey"]
    assert vector_log.discovery_key.hex() == v["discoveryKey"]
    assert (vector_log.length, vector_log.fork) == (v["length"], v["fork"])
    assert vector_log.tree_hash().hex() == v["treeHash"]
    assert vector_log.signable().hex() == v["signable"]
    assert len(vector_log.signable()) == 112
    assert vector_log.signature == bytes.fromhex(v["signature"])[2:66]
    assert vector_log.byte_length == 3


def test_truncate_reproduces_vector(vector_log: Log, hypercore_vectors: dict[str, Any]) -> None:
    after = hypercore_vectors["afterTruncate"]
    vector_log.truncate(2)
    assert (vector_log.length, vector_log.fork) == (after["length"], after["fork"])
    assert vector_log.tree_hash().hex() == after["treeHash"]
    assert vector_log.signable().hex() == after["signable"]
    assert vector_log.signature is not None and vector_log.manifest is not None
    assert crypto.verify(
        vector_log.signable(), vector_log.signature, vector_log.manifest.public_key
    )


def test_tree_hash_of_older_length(vector_log: Log, hypercore_vectors: dict[str, Any]) -> None:
    assert vector_log.tree_hash(2).hex() == hypercore_vectors["afterTruncate"]["treeHash"]


# --- flat tree ------------------------------------------------------------------------------


def test_flat_tree_small_cases() -> None:
    assert flat_tree.full_roots(0) == []
    assert flat_tree.full_roots(1) == [0]
    assert flat_tree.full_roots(3) == [1, 4]
    assert flat_tree.full_roots(8) == [7]
    assert flat_tree.full_roots(11) == [7, 17, 20]
    assert flat_tree.parent(0) == 1 and flat_tree.parent(2) == 1 and flat_tree.parent(1) == 3
    assert flat_tree.sibling(4) == 6 and flat_tree.sibling(5) == 1
    assert flat_tree.children(3) == (1, 5) and flat_tree.children(4) is None
    assert flat_tree.depth(7) == 3 and flat_tree.offset(11) == 1
    assert flat_tree.straddlers(3) == [5, 3]


@given(st.integers(min_value=0, max_value=5000))
def test_roots_partition_the_leaves(length: int) -> None:
    covered = []
    for root in flat_tree.full_roots(length):
        covered.extend(range(flat_tree.left_span(root), flat_tree.right_span(root) + 1, 2))
    assert covered == [2 * i for i in range(length)]
    for block in range(0, length, max(1, length // 7)):
        root = flat_tree.root_containing(block, length)
        assert flat_tree.left_span(root) <= 2 * block <= flat_tree.right_span(root)


@given(st.integers(min_value=0, max_value=1 << 20))
def test_parent_children_sibling_agree(node: int) -> None:
    parent = flat_tree.parent(node)
    kids = flat_tree.children(parent)
    assert kids is not None and node in kids
    assert flat_tree.sibling(node) in kids and flat_tree.sibling(node) != node
    assert flat_tree.index(flat_tree.depth(node), flat_tree.offset(node)) == node


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=300))
def test_straddlers_are_exactly_the_cut_nodes_below_the_boundary(cut: int, top: int) -> None:
    length = max(cut, top)
    nodes = {n for n in range(4 * length + 2)
             if flat_tree.right_span(n) < 2 * length}  # every node of a log of `length`
    expected = {n for n in nodes if n < 2 * cut and flat_tree.right_span(n) >= 2 * cut}
    assert set(flat_tree.straddlers(cut)) & nodes == expected


# --- compact-encoding uints and manifest decoding ------------------------------------------


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_uint_round_trip(n: int) -> None:
    data = merkle.encode_uint(n)
    assert merkle.decode_uint(data, 0) == (n, len(data))


def test_uint_rejects_long_forms_and_truncation() -> None:
    with pytest.raises(DecodeError):
        merkle.decode_uint(b"\xfd\x05\x00", 0)
    with pytest.raises(DecodeError):
        merkle.decode_uint(b"\xfe\x01", 0)
    with pytest.raises(DecodeError):
        merkle.decode_uint(b"", 0)


@given(st.binary(max_size=120))
def test_manifest_decode_raises_only_decode_error(data: bytes) -> None:
    try:
        manifest = Manifest.decode(data)
    except DecodeError:
        return
    assert manifest.encode() == data


def test_manifest_decode_truncated_prefixes(hypercore_vectors: dict[str, Any]) -> None:
    encoded = Manifest.single(bytes.fromhex(hypercore_vectors["publicKey"])).encode()
    for cut in range(len(encoded)):
        with pytest.raises(DecodeError):
            Manifest.decode(encoded[:cut])
    with pytest.raises(DecodeError):
        Manifest.decode(encoded + b"\x00")


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=200))
def test_post_order_is_the_order_appends_create_nodes(length: int) -> None:
    created: list[int] = []  # flat indices in creation order, as Log.append folds them
    roots: list[int] = []
    for n in range(1, length + 1):
        index = 2 * (n - 1)
        created.append(index)
        for depth in range((n & -n).bit_length() - 1):
            index = roots.pop() + (1 << depth)
            created.append(index)
        roots.append(index)
    assert [flat_tree.post_order(i) for i in created] == list(range(len(created)))
    assert flat_tree.leaf_post_order(length) == len(created)
    for root in flat_tree.full_roots(length):  # a subtree is one run ending at its root
        inside = [
            flat_tree.post_order(i)
            for i in range(flat_tree.left_span(root), flat_tree.right_span(root) + 1)
        ]
        assert sorted(inside) == list(range(min(inside), flat_tree.post_order(root) + 1))
