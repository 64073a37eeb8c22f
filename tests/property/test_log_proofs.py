"""Property tests: proofs verify after any history; any single flipped bit is refused."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from autobase_py import crypto
from autobase_py.errors import (
    AutobaseError,
    DecodeError,
    EquivocationError,
    InvalidProofError,
    InvalidSignatureError,
    LogFrozenError,
    VerificationError,
)
from autobase_py.log import (
    Log,
    Proof,
    ProofMismatchError,
    RangeProof,
    decode_proof,
    encode_proof,
    range_uncles,
)
from autobase_py.storage import Storage

SEED = bytes([3]) * 32

# A history: ("append", blocks) or ("truncate", fraction of the current length to keep).
operation = st.one_of(
    st.tuples(st.just("append"), st.lists(st.binary(max_size=12), min_size=1, max_size=9)),
    st.tuples(st.just("truncate"), st.floats(min_value=0, max_value=1)),
)


def build(history: list[tuple[str, Any]]) -> tuple[Log, list[bytes]]:
    """A writer after ``history``, and the reference model of its blocks."""
    log = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    model: list[bytes] = []
    for kind, arg in history:
        if kind == "append":
            log.append(arg)
            model.extend(arg)
        else:
            keep = int(len(model) * arg)
            log.truncate(keep)
            del model[keep:]
    return log, model


def fresh_replica(key: bytes) -> Log:
    return Log.replica(Storage.open_memory(), key)


def snapshot(log: Log) -> tuple[Any, ...]:
    held = tuple(log.get(i) if log.has(i) else None for i in range(log.length))
    return (log.length, log.fork, log.byte_length, log.signature, log.frozen, log.manifest,
            log.tree_hash(), held)


@settings(max_examples=60)
@given(st.lists(operation, min_size=1, max_size=12).filter(
    lambda h: any(k == "append" for k, _ in h)))
def test_every_proof_verifies_on_a_fresh_replica(history: list[tuple[str, Any]]) -> None:
    writer, model = build(history)
    assert writer.length == len(model)
    assert [writer.get(i) for i in range(writer.length)] == model
    for index in range(writer.length):
        replica = fresh_replica(writer.key)
        replica.apply_proof(decode_proof(encode_proof(writer.proof(index, upgrade_from=0))))
        assert replica.get(index) == model[index]
        assert (replica.length, replica.fork) == (writer.length, writer.fork)
        assert replica.tree_hash() == writer.tree_hash()
    # one replica collecting everything with block-only proofs ends equal to the writer
    if writer.length:
        replica = fresh_replica(writer.key)
        replica.apply_proof(writer.proof(None, upgrade_from=0))
        for index in reversed(range(writer.length)):
            replica.apply_proof(writer.proof(index))
        assert [replica.get(i) for i in range(replica.length)] == model


def flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def flip_node(nodes: Any, bit: int, *, in_hash: bool) -> tuple[Any, ...]:
    """``nodes`` ((size, hash) pairs) with one bit flipped in one node's hash or size."""
    out = list(nodes)
    k = bit % len(out)
    size, h = out[k]
    out[k] = (size, flip(h, bit // len(out))) if in_hash else (size ^ (1 << (bit % 16)), h)
    return tuple(out)


def tamper_upgrade(upgrade: Any, target: str, bit: int) -> Any:
    """``upgrade`` with one bit flipped in ``target``; None when it has no such part."""
    if target in ("root_hash", "root_size"):
        if not upgrade.nodes:
            return None
        nodes = flip_node(upgrade.nodes, bit, in_hash=target == "root_hash")
        return dataclasses.replace(upgrade, nodes=nodes)
    if target == "length":
        return dataclasses.replace(upgrade, length=upgrade.length ^ (1 << (bit % 20)))
    if target == "signature":
        return dataclasses.replace(upgrade, signature=flip(upgrade.signature, bit))
    raise AssertionError(target)


def assert_refused(apply: Callable[[], None], state: Callable[[], Any], target: str) -> None:
    """``apply`` (of a proof with ``target`` changed) raises a VerificationError and leaves
    ``state()`` as it was."""
    before = state()
    try:
        apply()
    except VerificationError:
        pass
    else:
        raise AssertionError(f"changed {target} was accepted")
    assert state() == before


def tamper(proof: Proof, target: str, bit: int) -> Proof | None:
    """``proof`` with one bit flipped in ``target``; None when the proof has no such part."""
    block, upgrade = proof.block, proof.upgrade
    assert block is not None and upgrade is not None
    if target == "value":
        if not block.value:
            return None
        value = flip(block.value, bit)
        return dataclasses.replace(proof, block=dataclasses.replace(block, value=value))
    if target in ("uncle_hash", "uncle_size"):
        if not block.nodes:
            return None
        nodes = flip_node(block.nodes, bit, in_hash=target == "uncle_hash")
        return dataclasses.replace(proof, block=dataclasses.replace(block, nodes=nodes))
    if target == "fork":
        return dataclasses.replace(proof, fork=proof.fork ^ (1 << (bit % 20)))
    changed = tamper_upgrade(upgrade, target, bit)
    return None if changed is None else dataclasses.replace(proof, upgrade=changed)


TARGETS = ["value", "uncle_hash", "uncle_size", "root_hash", "root_size", "length", "fork",
           "signature"]


@settings(max_examples=150)
@given(
    history=st.lists(operation, min_size=1, max_size=8).filter(
        lambda h: any(k == "append" for k, _ in h)),
    pick=st.integers(min_value=0, max_value=10_000),
    target=st.sampled_from(TARGETS),
    bit=st.integers(min_value=0, max_value=1 << 16),
    warm=st.booleans(),
)
def test_any_flipped_bit_is_refused_and_changes_nothing(
    history: list[tuple[str, Any]], pick: int, target: str, bit: int, warm: bool
) -> None:
    writer, _ = build(history)
    if writer.length == 0:
        return
    index = pick % writer.length
    replica = fresh_replica(writer.key)
    upgrade_from = 0
    if warm and writer.length > 1:
        # the replica already trusts a shorter prefix of the writer's current fork
        prefix = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
        short = 1 + pick % (writer.length - 1)
        prefix.append([writer.get(i) for i in range(short)])
        # same fork is needed for an extension; only use it when the writer is at fork 0
        if writer.fork == 0:
            replica.apply_proof(prefix.proof(None, upgrade_from=0))
            upgrade_from = short
    proof = writer.proof(index, upgrade_from=upgrade_from)
    bad = tamper(proof, target, bit)
    if bad is None or (target == "root_hash" and not proof.upgrade.nodes):  # type: ignore[union-attr]
        return
    assert_refused(lambda: replica.apply_proof(bad), lambda: snapshot(replica), target)
    replica.apply_proof(proof)  # the untampered proof still works afterwards
    assert replica.get(index) == writer.get(index)


@given(st.binary(max_size=300))
def test_decode_proof_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        proof = decode_proof(data)
    except DecodeError:
        return
    assert encode_proof(proof) == data


@settings(max_examples=40)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=20), st.data())
def test_encoded_proof_truncations_and_bit_flips(blocks: list[bytes], data: st.DataObject) -> None:
    writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    writer.append(blocks)
    index = data.draw(st.integers(min_value=0, max_value=len(blocks) - 1))
    encoded = encode_proof(writer.proof(index, upgrade_from=0))
    for cut in range(len(encoded)):  # every parser sees every prefix
        try:
            decode_proof(encoded[:cut])
        except DecodeError:
            continue
        raise AssertionError("a truncated proof decoded")
    bit = data.draw(st.integers(min_value=0, max_value=len(encoded) * 8 - 1))
    replica = fresh_replica(writer.key)
    try:
        replica.apply_proof(decode_proof(flip(encoded, bit)))
    except AutobaseError:
        assert replica.length == 0 and replica.manifest is None
        return
    # a flip that still decodes and verifies can only restate the truth (e.g. an index
    # moved between two equal blocks): whatever the replica holds equals the writer's block
    for i in range(replica.length):
        if replica.has(i):
            assert replica.get(i) == writer.get(i)


class WriterAndReplica(RuleBasedStateMachine):
    """A writer, a replica synced by proofs, and a list of blocks as the reference model."""

    @initialize()
    def setup(self) -> None:
        self.writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
        self.replica = Log.replica(Storage.open_memory(), self.writer.key)
        self.model: list[bytes] = []

    @rule(blocks=st.lists(st.binary(max_size=8), min_size=1, max_size=6))
    def append(self, blocks: list[bytes]) -> None:
        assert self.writer.append(blocks) == len(self.model) + len(blocks)
        self.model.extend(blocks)

    @precondition(lambda self: self.model)
    @rule(fraction=st.floats(min_value=0, max_value=1))
    def truncate(self, fraction: float) -> None:
        keep = int(len(self.model) * fraction)
        self.writer.truncate(keep)
        del self.model[keep:]

    @precondition(lambda self: self.writer.signature is not None)
    @rule()
    def sync(self) -> None:
        start = self.replica.length if self.replica.fork == self.writer.fork else 0
        if start > self.writer.length:
            start = 0
        self.replica.apply_proof(self.writer.proof(None, upgrade_from=start))
        assert self.replica.length == self.writer.length
        assert self.replica.tree_hash() == self.writer.tree_hash()

    @precondition(lambda self: self.replica.length and self.replica.fork == self.writer.fork)
    @rule(pick=st.integers(min_value=0, max_value=1000))
    def fetch(self, pick: int) -> None:
        if self.replica.length > self.writer.length:
            return  # the writer truncated below the replica without a new sync yet
        index = pick % self.replica.length
        self.replica.apply_proof(self.writer.proof(index))
        assert self.replica.get(index) == self.model[index]

    @invariant()
    def writer_matches_model(self) -> None:
        if hasattr(self, "writer"):
            assert self.writer.length == len(self.model)
            assert self.writer.byte_length == sum(len(b) for b in self.model)

    @invariant()
    def replica_holds_only_true_blocks(self) -> None:
        if hasattr(self, "replica") and self.replica.fork == self.writer.fork:
            for i in range(min(self.replica.length, len(self.model))):
                if self.replica.has(i):
                    assert self.replica.get(i) == self.model[i]


TestWriterAndReplica = WriterAndReplica.TestCase
TestWriterAndReplica.settings = settings(max_examples=60, stateful_step_count=25)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(["fork", "block", "upgrade", "manifest", "x"]), inner,
                      max_size=5),
    max_leaves=20,
)


@given(cbor_values)
def test_decode_proof_wrongly_shaped_cbor_raises_only_decode_error(value: Any) -> None:
    from autobase_py import encoding

    data = encoding.encode(value)
    try:
        proof = decode_proof(data)
    except DecodeError:
        return
    assert encode_proof(proof) == data


def test_replica_rolls_back_with_the_outer_transaction() -> None:
    writer, _ = build([("append", [b"a", b"b", b"c"])])
    replica = fresh_replica(writer.key)
    before = snapshot(replica)

    class AbortError(Exception):
        pass

    try:
        with replica.storage.transaction():
            replica.apply_proof(writer.proof(1, upgrade_from=0))
            assert replica.length == 3
            raise AbortError
    except AbortError:
        pass
    assert snapshot(replica) == before
    replica.apply_proof(writer.proof(1, upgrade_from=0))
    assert replica.get(1) == b"b"


# --- range proofs ---------------------------------------------------------------------------


def stored(log: Log) -> tuple[Any, ...]:
    """Everything the storage holds (header rows, every tree row), for "nothing changed"."""
    db = log.storage.db
    return (
        snapshot(log),
        db.execute("SELECT * FROM logs ORDER BY id").fetchall(),
        log.storage.tree_rows(),
    )


def serves_every_block(replica: Log, indices: range) -> None:
    """The replica stored enough nodes to prove each block it took, to yet another replica."""
    for index in indices:
        other = fresh_replica(replica.key)
        other.apply_proof(replica.proof(index, upgrade_from=0))
        assert other.get(index) == replica.get(index)


blocks_strategy = st.lists(st.binary(max_size=6), min_size=1, max_size=40)


def assert_memory_matches_disk(log: Log) -> None:
    """The header and roots a log keeps in memory equal what reopening it reads back."""
    def header(x: Log) -> tuple[object, ...]:
        return (x.length, x.fork, x.byte_length, x.signature, x.manifest, x.roots(), x.frozen)

    before = header(log)
    log.reload()
    assert header(log) == before


@settings(max_examples=40, deadline=None)
@given(blocks=blocks_strategy, data=st.data())
def test_range_proofs_verify_at_every_alignment(blocks: list[bytes], data: st.DataObject) -> None:
    writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    writer.append(blocks)
    n = len(blocks)
    pairs = [(s, e) for s in range(n) for e in range(s + 1, n + 1)]
    for start, end in data.draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=8)):
        replica = fresh_replica(writer.key)
        replica.apply_range(writer.range_proof(start, end, upgrade_from=0))
        assert (replica.length, replica.fork) == (writer.length, writer.fork)
        assert replica.tree_hash() == writer.tree_hash()
        assert [replica.has(i) for i in range(n)] == [start <= i < end for i in range(n)]
        assert [replica.get(i) for i in range(start, end)] == blocks[start:end]
        serves_every_block(replica, range(start, end))
        # the (sparse) replica proves the same range in turn, and with one as well
        other = fresh_replica(writer.key)
        other.apply_range(replica.range_proof(start, end, upgrade_from=0))
        assert [other.get(i) for i in range(start, end)] == blocks[start:end]


@settings(max_examples=60, deadline=None)
@given(
    blocks=blocks_strategy,
    prefix=st.integers(min_value=0, max_value=40),
    held=st.sets(st.integers(min_value=0, max_value=39), max_size=20),
    data=st.data(),
)
def test_range_onto_a_replica_holding_part_of_it(
    blocks: list[bytes], prefix: int, held: set[int], data: st.DataObject
) -> None:
    """A replica at a shorter length (or at the writer's) holding random blocks, some inside
    the range, takes a range (with an upgrade when behind) and ends as if per-block proofs had
    brought the same blocks."""
    writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    n = len(blocks)
    short = min(prefix, n)
    if short:
        writer.append(blocks[:short])
    replica = fresh_replica(writer.key)
    mirror = fresh_replica(writer.key)  # the same blocks, one proof each
    if short:
        for log in (replica, mirror):
            log.apply_proof(writer.proof(None, upgrade_from=0))
            for index in sorted(i for i in held if i < short):
                log.apply_proof(writer.proof(index))
    if short < n:
        writer.append(blocks[short:])
    start = data.draw(st.integers(min_value=0, max_value=n - 1))
    end = data.draw(st.integers(min_value=start + 1, max_value=n))
    upgrade = replica.length if replica.length < writer.length else None
    replica.apply_range(writer.range_proof(start, end, upgrade_from=upgrade))
    assert_memory_matches_disk(replica)
    if upgrade is not None:
        mirror.apply_proof(writer.proof(None, upgrade_from=upgrade))
    for index in range(start, end):
        mirror.apply_proof(writer.proof(index))
    assert replica.tree_hash() == writer.tree_hash() == mirror.tree_hash()
    assert [replica.has(i) for i in range(n)] == [mirror.has(i) for i in range(n)]
    assert [replica.get(i) for i in range(n) if replica.has(i)] == [
        blocks[i] for i in range(n) if replica.has(i)
    ]
    serves_every_block(replica, range(start, end))


RANGE_TARGETS = ["value", "uncle_hash", "uncle_size", "root_hash", "root_size", "length",
                 "proof_length", "fork", "signature", "drop_uncle", "extra_uncle", "drop_value"]


def tamper_range(proof: RangeProof, target: str, bit: int) -> RangeProof | None:
    """``proof`` with one part changed; None when the proof has no such part."""
    upgrade = proof.upgrade
    if target == "value":
        nonempty = [k for k, v in enumerate(proof.values) if v]
        if not nonempty:
            return None
        k = nonempty[bit % len(nonempty)]
        values = list(proof.values)
        values[k] = flip(values[k], bit // len(nonempty))
        return dataclasses.replace(proof, values=tuple(values))
    if target in ("uncle_hash", "uncle_size", "drop_uncle"):
        if not proof.nodes:
            return None
        if target == "drop_uncle":
            k = bit % len(proof.nodes)
            return dataclasses.replace(proof, nodes=proof.nodes[:k] + proof.nodes[k + 1:])
        nodes = flip_node(proof.nodes, bit, in_hash=target == "uncle_hash")
        return dataclasses.replace(proof, nodes=nodes)
    if target == "extra_uncle":
        return dataclasses.replace(proof, nodes=(*proof.nodes, (bit, bytes(32))))
    if target == "drop_value":
        if len(proof.values) < 2:
            return None
        k = bit % len(proof.values)
        return dataclasses.replace(proof, values=proof.values[:k] + proof.values[k + 1:])
    if target == "proof_length":
        return dataclasses.replace(proof, length=proof.length ^ (1 << (bit % 6)))
    if target == "fork":
        return dataclasses.replace(proof, fork=proof.fork ^ (1 << (bit % 20)))
    if upgrade is None:
        return None
    changed = tamper_upgrade(upgrade, target, bit)
    return None if changed is None else dataclasses.replace(proof, upgrade=changed)


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(operation, min_size=1, max_size=8).filter(
        lambda h: any(k == "append" for k, _ in h)),
    picks=st.tuples(st.integers(min_value=0, max_value=10_000),
                    st.integers(min_value=0, max_value=10_000)),
    target=st.sampled_from(RANGE_TARGETS),
    bit=st.integers(min_value=0, max_value=1 << 16),
    warm=st.sampled_from(["fresh", "prefix", "same_length"]),
)
@example(  # three equal blocks: dropping the last value is a valid shorter proof
    history=[("append", [b"", b"", b""])], picks=(0, 44), target="drop_value", bit=0,
    warm="fresh",
)
def test_any_change_to_a_range_proof_is_refused_and_stores_nothing(
    history: list[tuple[str, Any]], picks: tuple[int, int], target: str, bit: int, warm: str
) -> None:
    writer, _ = build(history)
    if writer.length == 0:
        return
    start = picks[0] % writer.length
    end = start + 1 + picks[1] % (writer.length - start)
    replica = fresh_replica(writer.key)
    upgrade_from: int | None = 0
    if warm == "prefix" and writer.length > 1 and writer.fork == 0:
        prefix = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
        short = 1 + picks[1] % (writer.length - 1)
        prefix.append([writer.get(i) for i in range(short)])
        replica.apply_proof(prefix.proof(None, upgrade_from=0))
        upgrade_from = short
    elif warm == "same_length":  # the replica already trusts the writer's length
        replica.apply_proof(writer.proof(None, upgrade_from=0))
        upgrade_from = None
    proof = writer.range_proof(start, end, upgrade_from=upgrade_from)
    bad = tamper_range(proof, target, bit)
    if bad is None or bad == proof:
        return
    if target == "drop_value" and bad.values == proof.values[:-1]:
        # Dropping one of several equal blocks at the end of the run is no lie: it is a proof
        # of the shorter range (found by hypothesis with three empty blocks). Fine to accept,
        # as long as exactly the true blocks are stored.
        if bad.length == writer.length:
            with contextlib.suppress(VerificationError):
                replica.apply_range(bad)
                assert [replica.get(i) for i in range(start, end - 1)] == [
                    writer.get(i) for i in range(start, end - 1)
                ]
                assert not replica.has(end - 1) or replica.get(end - 1) == writer.get(end - 1)
        return
    assert_refused(lambda: replica.apply_range(bad), lambda: stored(replica), target)
    replica.apply_range(proof)  # the untampered proof still works afterwards
    assert [replica.get(i) for i in range(start, end)] == [
        writer.get(i) for i in range(start, end)
    ]


def test_a_range_never_stores_a_bad_block_anywhere_in_it() -> None:
    """Every block of a long range is checked: flipping any one byte of any one block is
    refused, the replica unchanged."""
    writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    writer.append([b"block %d" % i for i in range(70)])
    replica = fresh_replica(writer.key)
    replica.apply_proof(writer.proof(None, upgrade_from=0))
    proof = writer.range_proof(3, 67)
    before = stored(replica)
    for k in range(len(proof.values)):
        values = list(proof.values)
        values[k] = flip(values[k], k)
        with pytest.raises(InvalidProofError):
            replica.apply_range(dataclasses.replace(proof, values=tuple(values)))
        assert stored(replica) == before
    replica.apply_range(proof)
    assert all(replica.has(i) == (3 <= i < 67) for i in range(70))


def test_a_range_across_a_fork_keeps_untouched_subtrees_like_apply_proof() -> None:
    writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    writer.append([b"%d" % i for i in range(12)])
    replica, mirror = fresh_replica(writer.key), fresh_replica(writer.key)
    for log in (replica, mirror):
        log.apply_range(writer.range_proof(0, 12, upgrade_from=0))
    writer.truncate(9)
    writer.append([b"new %d" % i for i in range(5)])
    with pytest.raises(ProofMismatchError):  # a newer fork needs an upgrade from 0
        replica.apply_range(writer.range_proof(9, 14, upgrade_from=None))
    replica.apply_range(writer.range_proof(9, 14, upgrade_from=0))
    assert_memory_matches_disk(replica)
    mirror.apply_proof(writer.proof(None, upgrade_from=0))
    for index in range(9, 14):
        mirror.apply_proof(writer.proof(index))
    assert (replica.fork, replica.length, replica.tree_hash()) == (
        writer.fork, writer.length, writer.tree_hash())
    assert stored(replica)[2:] == stored(mirror)[2:]  # same blocks and nodes kept/learned


def test_an_equivocating_range_upgrade_freezes_the_replica() -> None:
    writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    writer.append([b"a", b"b", b"c"])
    replica = fresh_replica(writer.key)
    replica.apply_range(writer.range_proof(0, 1, upgrade_from=0))
    twin = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    twin.append([b"a", b"B", b"c"])
    with pytest.raises(EquivocationError):
        replica.apply_range(twin.range_proof(1, 2, upgrade_from=0))
    assert replica.frozen and not replica.has(1)
    with pytest.raises(LogFrozenError):
        replica.apply_range(writer.range_proof(1, 2))


def test_a_range_checked_against_a_trusted_tree_hash() -> None:
    writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    writer.append([b"%d" % i for i in range(9)])
    proof = writer.range_proof(2, 7, upgrade_from=0)
    assert proof.upgrade is not None
    unsigned = dataclasses.replace(
        proof, upgrade=dataclasses.replace(proof.upgrade, signature=bytes(64)))
    replica = fresh_replica(writer.key)
    with pytest.raises(InvalidSignatureError):
        replica.apply_range(unsigned)
    with pytest.raises(InvalidProofError):
        replica.apply_range(unsigned, trusted_tree_hash=bytes(32))
    replica.apply_range(unsigned, trusted_tree_hash=writer.tree_hash())
    assert replica.get(6) == b"6" and replica.signature is None and replica.length == 9


def test_apply_blocks_checks_every_node_it_recomputes() -> None:
    """The per-index form (what replication uses): extra nodes inside the range must match
    what the values hash to; nodes above the replica's roots are ignored."""
    writer = Log.create(Storage.open_memory(), crypto.key_pair(SEED))
    writer.append([b"%d" % i for i in range(16)])
    replica = fresh_replica(writer.key)
    replica.apply_proof(writer.proof(None, upgrade_from=0))
    proof = writer.range_proof(5, 11)
    nodes = dict(zip(range_uncles(5, 11, 16), proof.nodes, strict=True))
    found = writer._nodes([14])
    inside = {14: found[14]}
    before = stored(replica)
    bad_inside = {14: (inside[14][0], bytes(32))}
    with pytest.raises(InvalidProofError):
        replica.apply_blocks(0, 5, proof.values, {**nodes, **bad_inside})
    with pytest.raises(InvalidProofError):  # a needed node missing
        replica.apply_blocks(0, 5, proof.values, dict(list(nodes.items())[1:]))
    with pytest.raises(InvalidProofError):  # past the trusted length
        replica.apply_blocks(0, 14, [b"x", b"y", b"z"], {})
    assert stored(replica) == before
    replica.apply_blocks(0, 5, proof.values, {**nodes, 1 << 40: (1, bytes(32)), **inside})
    assert [replica.get(i) for i in range(5, 11)] == [b"%d" % i for i in range(5, 11)]
