"""The Log: appends, reads, truncation, proofs between writer and replicas, equivocation."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from autobase_py import crypto
from autobase_py.errors import (
    BlockNotAvailableError,
    EquivocationError,
    InvalidProofError,
    InvalidSignatureError,
    LocalError,
    LogFrozenError,
    NotWritableError,
    OutOfRangeError,
)
from autobase_py.log import (
    Log,
    Manifest,
    Node,
    Proof,
    ProofMismatchError,
    decode_proof,
    encode_proof,
    flat_tree,
    leaf_hash,
    parent_hash,
    tree_hash,
    verify_block_path,
    verify_roots_against,
)
from autobase_py.log.proof import derive_roots
from autobase_py.storage import Storage

SEED = bytes(range(32))


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def open_storage(folder: Path, name: str) -> Storage:
    return Storage.open(folder / name)


@pytest.fixture
def writer(folder: Path) -> Iterator[Log]:
    storage = open_storage(folder, "writer")
    yield Log.create(storage, crypto.key_pair(SEED))
    storage.close()


@pytest.fixture
def replica(folder: Path, writer: Log) -> Iterator[Log]:
    storage = open_storage(folder, "replica")
    yield Log.replica(storage, writer.key)
    storage.close()


def state(log: Log) -> tuple[object, ...]:
    blocks = tuple(log.has(i) and log.get(i) for i in range(log.length))
    return (log.length, log.fork, log.byte_length, log.signature, log.tree_hash(), blocks,
            log.frozen, log.manifest)


def test_append_get_has(writer: Log) -> None:
    assert writer.writable and writer.length == 0 and writer.signature is None
    assert writer.append([b"one"]) == 1
    assert writer.append([b"two", b"three", b""]) == 4
    assert [writer.get(i) for i in range(4)] == [b"one", b"two", b"three", b""]
    assert writer.has(3) and not writer.has(4) and not writer.has(-1)
    assert writer.byte_length == 11
    assert writer.append([]) == 4
    with pytest.raises(BlockNotAvailableError):
        writer.get(4)
    with pytest.raises(LocalError):
        writer.append(b"not a list")  # type: ignore[arg-type]
    with pytest.raises(LocalError):
        writer.append(["text"])  # type: ignore[list-item]
    assert writer.length == 4


def test_one_signature_per_append_call(writer: Log) -> None:
    writer.append([b"x"] * 5)
    assert writer.manifest is not None and writer.signature is not None
    assert crypto.verify(writer.signable(), writer.signature, writer.manifest.public_key)


def test_unsigned_log_has_the_same_tree_but_no_signed_length(writer: Log, folder: Path) -> None:
    storage = open_storage(folder, "unsigned")
    derived = Log.create(storage, crypto.key_pair(bytes(32)))
    derived.signed_appends = False
    for log in (writer, derived):
        log.append([b"a", b"b", b"c"])
        log.truncate(2)
        log.append([b"d"])
    assert derived.signature is None and writer.signature is not None
    assert derived.tree_hash() == writer.tree_hash() and derived.fork == writer.fork == 1
    with pytest.raises(BlockNotAvailableError):
        derived.proof(0, upgrade_from=0)
    assert derived.proof(1).block is not None  # block proofs need no signature
    storage.close()
    reopened = Log.create(Storage.open(folder / "unsigned"), crypto.key_pair(bytes(32)))
    assert reopened.signature is None and reopened.length == 3
    reopened.storage.close()


def reference_tree_hash(blocks: list[bytes]) -> bytes:
    """The tree hash computed top-down from the definitions (independent of append's folding)."""

    def node(index: int) -> Node:
        kids = flat_tree.children(index)
        if kids is None:
            block = blocks[index // 2]
            return Node(index, len(block), leaf_hash(block))
        left, right = node(kids[0]), node(kids[1])
        return Node(index, left.size + right.size, parent_hash(left, right))

    return tree_hash([node(r) for r in flat_tree.full_roots(len(blocks))])


def test_append_matches_reference_tree(writer: Log) -> None:
    blocks = [bytes([i]) * (i % 7) for i in range(70)]
    cursor = 0
    for size in [1, 2, 3, 1, 8, 16, 1, 5, 33]:
        writer.append(blocks[cursor : cursor + size])
        cursor += size
        assert writer.tree_hash() == reference_tree_hash(blocks[:cursor])
        for older in range(0, cursor, 5):
            assert writer.tree_hash(older) == reference_tree_hash(blocks[:older])


def test_replica_is_read_only_and_empty(replica: Log) -> None:
    assert not replica.writable and replica.length == 0 and replica.manifest is None
    with pytest.raises(NotWritableError):
        replica.append([b"x"])
    with pytest.raises(NotWritableError):
        replica.truncate(0)


def test_fresh_replica_gets_blocks_with_upgrade(writer: Log, replica: Log) -> None:
    writer.append([b"a", b"b", b"c", b"d", b"e"])
    replica.apply_proof(decode_proof(encode_proof(writer.proof(2, upgrade_from=0))))
    assert (replica.length, replica.fork, replica.signature) == (5, 0, writer.signature)
    assert replica.tree_hash() == writer.tree_hash()
    assert replica.get(2) == b"c" and not replica.has(1)
    with pytest.raises(BlockNotAvailableError):
        replica.get(1)
    # block-only proofs against the trusted length
    for i in (0, 4, 1):
        replica.apply_proof(writer.proof(i))
    assert [replica.has(i) for i in range(5)] == [True, True, True, False, True]
    # runs stop at the first block not stored, and at the length
    assert replica.get_run(0, 99) == [b"a", b"b", b"c"]
    assert replica.get_run(3, 5) == [] and replica.get_run(4, 99) == [b"e"]
    assert replica.get_run(5, 9) == [] and replica.get_run(-1, 3) == []
    assert writer.get_run(1, 4) == [b"b", b"c", b"d"]


def test_upgrade_extends_replica_and_block_only_proofs_reach_older_roots(
    writer: Log, replica: Log
) -> None:
    writer.append([b"%d" % i for i in range(6)])
    replica.apply_proof(writer.proof(None, upgrade_from=0))
    writer.append([b"%d" % i for i in range(6, 23)])
    # a block-only proof from a writer that is ahead still verifies (index < replica length)
    replica.apply_proof(writer.proof(5))
    assert replica.get(5) == b"5" and replica.length == 6
    replica.apply_proof(writer.proof(20, upgrade_from=6))
    assert replica.length == 23 and replica.get(20) == b"20"
    assert replica.tree_hash() == writer.tree_hash()
    assert replica.tree_hash(6) == writer.tree_hash(6)
    # an upgrade that does not start at the replica's length is refused as a mismatch
    writer.append([b"more"])
    with pytest.raises(ProofMismatchError):
        replica.apply_proof(writer.proof(None, upgrade_from=6))
    with pytest.raises(InvalidProofError):
        replica.apply_proof(writer.proof(23))  # past the replica's trusted length


def test_replica_serves_proofs_for_what_it_holds(writer: Log, replica: Log, folder: Path) -> None:
    writer.append([b"%d" % i for i in range(13)])
    replica.apply_proof(writer.proof(7, upgrade_from=0))
    second = Log.replica(open_storage(folder, "second"), writer.key)
    second.apply_proof(replica.proof(7, upgrade_from=0))
    assert second.get(7) == b"7" and second.tree_hash() == writer.tree_hash()
    with pytest.raises(BlockNotAvailableError):
        replica.proof(8)


def test_replica_follows_truncation_to_a_new_fork(writer: Log, replica: Log) -> None:
    writer.append([b"a", b"b", b"c", b"d"])
    replica.apply_proof(writer.proof(3, upgrade_from=0))
    writer.truncate(2)
    writer.append([b"X", b"Y", b"Z"])
    assert writer.fork == 1
    with pytest.raises(ProofMismatchError):
        replica.apply_proof(writer.proof(1))  # newer fork without an upgrade
    with pytest.raises(ProofMismatchError):
        replica.apply_proof(writer.proof(1, upgrade_from=4))
    replica.apply_proof(writer.proof(3, upgrade_from=0))
    assert (replica.length, replica.fork, replica.get(3)) == (5, 1, b"Y")
    assert replica.tree_hash() == writer.tree_hash()
    with pytest.raises(ProofMismatchError):  # a stale fork is refused
        replica.apply_proof(dataclasses.replace(writer.proof(1), fork=0))


def test_truncate_bumps_fork_and_drops_data(writer: Log) -> None:
    writer.append([b"%d" % i for i in range(10)])
    before = writer.tree_hash(4)
    writer.truncate(4)
    assert (writer.length, writer.fork, writer.tree_hash()) == (4, 1, before)
    assert not writer.has(4)
    assert writer.storage.count_blocks(writer._id) == 4
    writer.append([b"new"])
    assert writer.get(4) == b"new" and writer.length == 5
    with pytest.raises(OutOfRangeError):
        writer.truncate(6)
    writer.truncate(0)
    assert (writer.length, writer.fork, writer.byte_length) == (0, 2, 0)
    writer.append([b"again"])
    assert writer.get(0) == b"again"


def test_tampered_proof_parts_fail_typed(writer: Log, replica: Log) -> None:
    writer.append([b"a", b"b", b"c"])
    good = writer.proof(1, upgrade_from=0)
    assert good.block is not None and good.upgrade is not None
    bad_sig = dataclasses.replace(
        good, upgrade=dataclasses.replace(good.upgrade, signature=bytes(64))
    )
    with pytest.raises(InvalidSignatureError):
        replica.apply_proof(bad_sig)
    bad_block = dataclasses.replace(good, block=dataclasses.replace(good.block, value=b"B"))
    with pytest.raises(InvalidProofError):
        replica.apply_proof(bad_block)
    with pytest.raises(InvalidSignatureError):
        replica.apply_proof(dataclasses.replace(good, fork=1))
    assert good.manifest is not None
    flipped = good.manifest[:-1] + bytes([good.manifest[-1] ^ 1])
    with pytest.raises(InvalidProofError):
        replica.apply_proof(dataclasses.replace(good, manifest=flipped))
    assert replica.length == 0 and replica.manifest is None
    replica.apply_proof(good)
    assert replica.get(1) == b"b"


def test_equivocation_freezes_the_replica(writer: Log, replica: Log, folder: Path) -> None:
    writer.append([b"a", b"b"])
    replica.apply_proof(writer.proof(None, upgrade_from=0))
    # Someone with the writer's key signs another history of the same (length, fork).
    twin = Log.create(open_storage(folder, "twin"), crypto.key_pair(SEED))
    twin.append([b"a", b"B"])
    with pytest.raises(EquivocationError):
        replica.apply_proof(twin.proof(None, upgrade_from=0))
    assert replica.frozen
    with pytest.raises(LogFrozenError):
        replica.apply_proof(writer.proof(0))
    # the freeze is persisted
    path = replica.storage.path
    replica.storage.close()
    reopened = Log.replica(Storage.open(path), writer.key)
    assert reopened.frozen
    assert writer.key == twin.key


def test_restating_the_same_length_is_a_no_op(writer: Log, replica: Log) -> None:
    writer.append([b"a", b"b", b"c"])
    replica.apply_proof(writer.proof(None, upgrade_from=0))
    before = state(replica)
    replica.apply_proof(writer.proof(None, upgrade_from=0))
    replica.apply_proof(writer.proof(None, upgrade_from=3))
    assert state(replica) == before


def test_verify_against_a_trusted_tree_hash(writer: Log, replica: Log) -> None:
    writer.append([b"%d" % i for i in range(9)])
    proof = writer.proof(6, upgrade_from=0)
    assert proof.upgrade is not None and proof.block is not None
    unsigned = dataclasses.replace(
        proof, upgrade=dataclasses.replace(proof.upgrade, signature=bytes(64))
    )
    with pytest.raises(InvalidProofError):
        replica.apply_proof(unsigned, trusted_tree_hash=bytes(32))
    replica.apply_proof(unsigned, trusted_tree_hash=writer.tree_hash())
    assert replica.get(6) == b"6" and replica.signature is None and replica.length == 9
    # the pure functions, as a reader would use them with a certificate
    roots, learned = derive_roots(0, 9, proof.upgrade.nodes, lambda i: None)
    verify_roots_against(roots, writer.tree_hash())
    trusted = {n.index: (n.size, n.hash) for n in learned}
    path = verify_block_path(proof.block, trusted.get)
    assert path[0].index == 12


def test_proof_arguments_are_checked(writer: Log) -> None:
    with pytest.raises(BlockNotAvailableError):
        writer.proof(None, upgrade_from=0)  # nothing signed yet
    writer.append([b"a"])
    with pytest.raises(OutOfRangeError):
        writer.proof(None, upgrade_from=2)
    with pytest.raises(BlockNotAvailableError):
        writer.proof(1)
    empty = writer.proof(None)
    assert empty == Proof(fork=0)


def test_replica_needs_the_manifest_first(writer: Log, replica: Log) -> None:
    writer.append([b"a", b"b"])
    with pytest.raises(ProofMismatchError):
        replica.apply_proof(writer.proof(None, upgrade_from=0).__class__(
            fork=0, upgrade=writer.proof(None, upgrade_from=0).upgrade))
    stranger = crypto.key_pair(bytes(32))
    with pytest.raises(InvalidProofError):
        replica.apply_proof(dataclasses.replace(
            writer.proof(None, upgrade_from=0),
            manifest=Manifest.single(stranger.public_key).encode()))


def test_reopen_restores_header_and_roots(folder: Path) -> None:
    storage = open_storage(folder, "w")
    log = Log.create(storage, crypto.key_pair(SEED))
    log.append([b"%d" % i for i in range(37)])
    snapshot = state(log)
    storage.close()
    again = Log.create(open_storage(folder, "w"), crypto.key_pair(SEED))
    assert state(again) == snapshot
    assert again.append([b"next"]) == 38


def test_replica_keeps_untouched_subtrees_across_a_fork(writer: Log, replica: Log) -> None:
    writer.append([b"%d" % i for i in range(16)])
    replica.apply_proof(writer.proof(None, upgrade_from=0))
    for i in range(16):
        replica.apply_proof(writer.proof(i))
    writer.truncate(12)  # roots of 12 are nodes 7 (blocks 0-7) and 19 (blocks 8-11)
    writer.append([b"x", b"y", b"z"])
    replica.apply_proof(writer.proof(13, upgrade_from=0))
    assert (replica.fork, replica.length) == (1, 15)
    assert [replica.has(i) for i in range(15)] == [True] * 12 + [False, True, False]
    assert [replica.get(i) for i in range(12)] == [b"%d" % i for i in range(12)]
    assert replica.get(13) == b"y" and replica.tree_hash() == writer.tree_hash()
    replica.apply_proof(writer.proof(14))
    second = Log.replica(Storage.open_memory(), writer.key)
    second.apply_proof(replica.proof(5, upgrade_from=0))  # kept blocks can still be proven
    assert second.get(5) == b"5"


def test_range_proof_arguments_are_checked(writer: Log, replica: Log, folder: Path) -> None:
    with pytest.raises(OutOfRangeError):
        writer.range_proof(0, 1)  # empty log
    writer.append([b"a", b"b", b"c"])
    for start, end in ((1, 1), (2, 1), (0, 4), (-1, 2)):
        with pytest.raises(OutOfRangeError):
            writer.range_proof(start, end)
    with pytest.raises(OutOfRangeError):
        writer.range_proof(0, 2, upgrade_from=4)
    unsigned = Log.create(open_storage(folder, "unsigned"), crypto.key_pair(bytes([5]) * 32))
    unsigned.signed_appends = False
    unsigned.append([b"x"])
    with pytest.raises(BlockNotAvailableError):
        unsigned.range_proof(0, 1, upgrade_from=0)
    # a sparse replica cannot prove blocks it lacks
    replica.apply_range(writer.range_proof(1, 2, upgrade_from=0))
    with pytest.raises(BlockNotAvailableError):
        replica.range_proof(0, 2)
    assert replica.range_proof(1, 2).values == (b"b",)
    # a range proof without an upgrade fits only a replica at the prover's length
    writer.append([b"d"])
    with pytest.raises(ProofMismatchError):
        replica.apply_range(writer.range_proof(2, 4))
    replica.apply_range(writer.range_proof(2, 4, upgrade_from=3))
    assert [replica.has(i) for i in range(4)] == [False, True, True, True]


def test_sync_log_moves_runs_of_a_sparse_source_as_ranges(writer: Log, folder: Path) -> None:
    from autobase_py.testing.sync import sync_log

    writer.append([b"%d" % i for i in range(40)])
    sparse = Log.replica(open_storage(folder, "sparse"), writer.key)
    sparse.apply_proof(writer.proof(None, upgrade_from=0))
    held = [*range(3, 9), 12, *range(20, 33)]
    for index in held:
        sparse.apply_proof(writer.proof(index))
    dst = Log.replica(open_storage(folder, "dst"), writer.key)
    assert sync_log(sparse, dst) == len(held)
    assert (dst.length, dst.tree_hash()) == (40, writer.tree_hash())
    assert [i for i in range(40) if dst.has(i)] == held
    assert sync_log(sparse, dst) == 0  # nothing beyond dst's length
    writer.append([b"more"] * 5)
    assert sync_log(writer, dst) == 5 and dst.length == 45 and dst.get(44) == b"more"


def test_roots_of_earlier_lengths_stay_true_across_truncates_and_rollbacks(writer: Log) -> None:
    """The in-memory roots of earlier lengths (what a truncate and ``roots(length)`` use)
    always equal the stored ones, whatever appends, truncates and rolled-back transactions
    came before."""
    rng = random.Random(5)
    storage = writer.storage
    for step in range(300):
        action = rng.random()
        if action < 0.55 or writer.length == 0:
            writer.append([b"%d.%d" % (step, i) for i in range(rng.choice((1, 1, 2, 7)))])
        elif action < 0.85:
            writer.truncate(rng.randrange(max(0, writer.length - 9), writer.length + 1))
        else:
            with contextlib.suppress(KeyError), storage.transaction():
                writer.append([b"gone"] * rng.randrange(1, 4))
                writer.truncate(rng.randrange(writer.length + 1))
                raise KeyError
        for length in range(max(0, writer.length - 12), writer.length + 1):
            assert writer.roots(length) == writer._stored_roots(length)


def test_a_range_proof_stops_where_its_bytes_reach_the_cap(writer: Log, replica: Log) -> None:
    writer.append([b"x" * 10 for _ in range(8)])
    proof = writer.range_proof(0, 8, 0, max_bytes=35, block_overhead=2)  # 12 bytes a block
    assert proof.values == (b"x" * 10,) * 3  # 36 >= 35 at the third
    replica.apply_range(proof)  # the uncles match the shorter range
    assert replica.length == 8 and [replica.has(i) for i in range(4)] == [True] * 3 + [False]
    assert writer.range_proof(0, 8, max_bytes=1000).values == (b"x" * 10,) * 8
