"""Property tests: proofs verify after any history; any single flipped bit is refused."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from autobase_py import crypto
from autobase_py.errors import AutobaseError, DecodeError, VerificationError
from autobase_py.log import Log, Proof, decode_proof, encode_proof
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
        nodes = list(block.nodes)
        k = bit % len(nodes)
        size, h = nodes[k]
        nodes[k] = (size, flip(h, bit // len(nodes))) if target == "uncle_hash" else (
            size ^ (1 << (bit % 16)), h)
        return dataclasses.replace(proof, block=dataclasses.replace(block, nodes=tuple(nodes)))
    if target in ("root_hash", "root_size"):
        nodes = list(upgrade.nodes)
        k = bit % len(nodes)
        size, h = nodes[k]
        nodes[k] = (size, flip(h, bit // len(nodes))) if target == "root_hash" else (
            size ^ (1 << (bit % 16)), h)
        return dataclasses.replace(proof, upgrade=dataclasses.replace(upgrade, nodes=tuple(nodes)))
    if target == "length":
        return dataclasses.replace(
            proof, upgrade=dataclasses.replace(upgrade, length=upgrade.length ^ (1 << (bit % 20))))
    if target == "fork":
        return dataclasses.replace(proof, fork=proof.fork ^ (1 << (bit % 20)))
    if target == "signature":
        return dataclasses.replace(
            proof, upgrade=dataclasses.replace(upgrade, signature=flip(upgrade.signature, bit)))
    raise AssertionError(target)


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
    before = snapshot(replica)
    try:
        replica.apply_proof(bad)
    except VerificationError:
        pass
    else:
        raise AssertionError(f"tampered {target} was accepted")
    assert snapshot(replica) == before
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
