"""Oplog block format, membership and checkpoint certificates (pure parts of the base)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobase_py import crypto, encoding
from autobase_py.base.checkpoint import (
    Certificate,
    Checkpoint,
    CheckpointSignature,
    assemble,
    verify_chain,
)
from autobase_py.base.oplog import OplogBlock, decode_block, encode_block
from autobase_py.base.system import Membership
from autobase_py.errors import DecodeError, VerificationError
from autobase_py.log.merkle import Manifest

K1, K2 = b"\x01" * 32, b"\x02" * 32


def test_block_round_trip_and_canonical_heads() -> None:
    block = OplogBlock(heads=((K2, 3), (K1, 1)), batch=2, value=b"v")
    decoded = decode_block(encode_block(block))
    assert decoded.heads == ((K1, 1), (K2, 3))
    assert decoded.batch == 2 and decoded.value == b"v" and not decoded.is_ack
    assert decode_block(encode_block(OplogBlock(heads=()))).is_ack


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ({"v": 2, "heads": [], "batch": 1, "value": None}, "format version"),
        ({"v": 1, "heads": [[b"x", 1]], "batch": 1, "value": None}, "head"),
        ({"v": 1, "heads": [[K1, 0]], "batch": 1, "value": None}, "head"),
        ({"v": 1, "heads": [[K2, 1], [K1, 1]], "batch": 1, "value": None}, "sorted"),
        ({"v": 1, "heads": [], "batch": 0, "value": b""}, "batch"),
        ({"v": 1, "heads": [], "batch": 2, "value": None}, "ack"),
        ({"v": 1, "heads": [], "batch": 1}, "value"),
        ({"v": 1, "heads": [], "batch": 1, "value": 3}, "value"),
        ({"v": 1, "heads": [], "batch": 1, "value": b"", "x": 1}, "unknown"),
        ({"v": 1, "heads": [], "batch": 1, "value": b"", "ckpt": [1]}, "checkpoint"),
        ({"v": 1, "heads": [], "batch": 1, "value": b"", "ckpt": []}, "ckpt"),
    ],
)
def test_malformed_blocks_are_named(obj: dict[str, object], problem: str) -> None:
    with pytest.raises(DecodeError, match=problem):
        decode_block(encoding.encode(obj))


@given(st.binary(max_size=120))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decode_block(data)
    except DecodeError:
        pass
    else:
        assert encode_block(decode_block(data)) == data


def test_membership_refuses_to_lose_the_last_indexer() -> None:
    m = Membership.genesis(K1)
    assert m.remove(K1) is not None and m.indexers == (K1,)
    assert m.add(K1, indexer=False) is not None and m.indexers == (K1,)
    assert m.add(K2, indexer=False) is None and m.epoch == 0
    assert m.add(K2, indexer=True) is None and m.epoch == 1
    assert m.remove(K1) is None and m.indexers == (K2,) and m.epoch == 2
    assert Membership.from_wire(encoding.decode(m.encode())) == m


def test_membership_hash_follows_every_change() -> None:
    m = Membership.genesis(K1)
    seen = {m.hash()}
    copy = m.copy()
    for change in (lambda: m.add(K2, indexer=False), lambda: m.add(K2, indexer=True),
                   lambda: m.remove(K2)):
        change()
        fresh = Membership.from_wire(encoding.decode(m.encode()))
        assert m.hash() == fresh.hash()  # the memo never outlives a change
        seen.add(m.hash())
    # four states (the last has the genesis writers at a later epoch); the copy kept its own
    assert len(seen) == 4 and copy.hash() == Membership.genesis(K1).hash() != m.hash()


def writer(seed: int) -> tuple[crypto.KeyPair, bytes]:
    kp = crypto.key_pair(bytes([seed]) * 32)
    return kp, Manifest.single(kp.public_key).key()


def make_cert(
    registry: bytes, signers: list[crypto.KeyPair], m: Membership, signing: list[bytes], n: int
) -> Certificate:
    cp = Checkpoint(registry, m.epoch, n, n, b"\x07" * 32, m.hash())
    sigs = [CheckpointSignature.create(cp, kp) for kp in signers]
    cert = assemble(registry, sigs, m, signing)
    assert cert is not None
    return cert


def test_certificate_chain_verifies_from_the_registry_key_after_two_rotations() -> None:
    (a, ka), (b, kb), (_c, kc), (d, kd) = (writer(i) for i in range(1, 5))
    registry = ka
    # epoch 1: a adds b and c as indexers (signed by a alone, the genesis set)
    m1 = Membership(writers={ka: True, kb: True, kc: True}, epoch=2)
    link1 = make_cert(registry, [a], m1, [ka], 10)
    # rotation: c is lost; a and b replace it with d
    m2 = Membership(writers={ka: True, kb: True, kd: True}, epoch=4)
    link2 = make_cert(registry, [a, b], m2, [ka, kb, kc], 20)
    # newest checkpoint, signed by b and d (a is down)
    final = make_cert(registry, [b, d], m2, [ka, kb, kd], 30)
    verify_chain(registry, [link1, link2], final)
    round_trip = Certificate.from_wire(registry, encoding.decode(final.encode()))
    verify_chain(registry, [link1, link2], round_trip)
    # skipping a link: d is not known to the set before it
    with pytest.raises(VerificationError):
        verify_chain(registry, [link1], final)
    # a minority is not enough
    cp = Checkpoint(registry, m2.epoch, 31, 31, b"\x07" * 32, m2.hash())
    assert assemble(registry, [CheckpointSignature.create(cp, d)], m2, [ka, kb, kd]) is None


def test_tampered_certificates_fail() -> None:
    (a, ka), (b, kb) = writer(1), writer(2)
    m = Membership(writers={ka: True, kb: True}, epoch=1)
    cert = make_cert(ka, [a, b], m, [ka], 5)
    bad_cp = Checkpoint(ka, cert.checkpoint.epoch, 6, 6, b"\x07" * 32, m.hash())
    with pytest.raises(VerificationError):
        verify_chain(ka, [], Certificate(bad_cp, m, cert.signatures))
    other = Membership(writers={ka: True, kb: False}, epoch=1)
    with pytest.raises(VerificationError, match="membership"):
        verify_chain(ka, [], Certificate(cert.checkpoint, other, cert.signatures))
    with pytest.raises(VerificationError, match="another registry"):
        verify_chain(kb, [], cert)


def test_ledger_verifies_only_the_votes_a_certificate_needs_and_drops_forged_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from autobase_py.base import checkpoint as checkpoint_module
    from autobase_py.base.events import EventHub
    from autobase_py.base.ledger import CheckpointLedger
    from autobase_py.storage import Storage

    (a, ka), (b, kb), (c, kc) = writer(1), writer(2), writer(3)
    members = Membership(writers={ka: True, kb: True, kc: True}, epoch=2)
    signing = (ka, kb, kc)
    storage = Storage.open_memory()
    ledger = CheckpointLedger(ka, storage, a, ka, EventHub())
    verified: list[bytes] = []
    real_verify = checkpoint_module.crypto.verify

    def counting_verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
        verified.append(public_key)
        return real_verify(message, signature, public_key)

    monkeypatch.setattr(checkpoint_module.crypto, "verify", counting_verify)

    def boundary(length: int) -> Checkpoint:
        cp = Checkpoint(ka, members.epoch, length, length, bytes([length]) * 32, members.hash())
        with storage.transaction():
            ledger.confirmed(cp, signing, members, link=False)
        return cp

    cp = boundary(10)
    assert ledger.certificate is None  # our own vote alone is a minority
    forged = dataclasses.replace(CheckpointSignature.create(cp, b), signature=b"\x00" * 64)
    with storage.transaction():
        ledger.collect([forged])
    assert ledger.certificate is None and verified == [b.public_key]  # checked, dropped
    with storage.transaction():
        ledger.collect([CheckpointSignature.create(cp, c)])
    assert ledger.certificate is not None and ledger.signed_length == 10
    assert {pk for pk, _ in ledger.certificate.signatures} == {a.public_key, c.public_key}
    # next boundary: both others arrive in one node; one verification completes a majority
    cp2 = boundary(20)
    verified.clear()
    with storage.transaction():
        ledger.collect([CheckpointSignature.create(cp2, b), CheckpointSignature.create(cp2, c)])
    assert ledger.signed_length == 20 and len(verified) == 1
    # a signature over another checkpoint at the same length never counts
    cp3 = boundary(30)
    other = Checkpoint(ka, members.epoch, 30, 30, b"\x09" * 32, members.hash())
    with storage.transaction():
        ledger.collect([CheckpointSignature.create(other, b)])
    assert ledger.signed_length == 20
    assert cp3 != other
