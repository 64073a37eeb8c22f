"""crypto.py against the vectors produced by the real hypercore-crypto."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from autobase_py import crypto
from autobase_py.errors import InvalidKeyError


def test_namespaces_match_hypercore(hypercore_vectors: dict[str, Any]) -> None:
    assert [n.hex() for n in crypto.namespace("hypercore", 6)] == hypercore_vectors["ns_hypercore"]
    assert [n.hex() for n in crypto.namespace("autobase", 4)] == hypercore_vectors["ns_autobase"]
    assert [
        n.hex() for n in crypto.namespace("autobase/entropy", 2)
    ] == hypercore_vectors["ns_autobase_entropy"]


def test_key_pair_from_seed(hypercore_vectors: dict[str, Any]) -> None:
    kp = crypto.key_pair(bytes.fromhex(hypercore_vectors["seed"]))
    assert kp.public_key.hex() == hypercore_vectors["publicKey"]
    assert len(kp.secret_key) == 64
    assert "secret" not in repr(kp) or kp.secret_key.hex() not in repr(kp)


def test_discovery_key(hypercore_vectors: dict[str, Any]) -> None:
    key = bytes.fromhex(hypercore_vectors["coreKey"])
    assert crypto.discovery_key(key).hex() == hypercore_vectors["discoveryKey"]


def test_hash_is_blake2b_of_concatenation(hypercore_vectors: dict[str, Any]) -> None:
    leaf = crypto.hash(b"\x00", struct.pack("<Q", 5), b"hello")
    assert leaf.hex() == hypercore_vectors["leaf_hello"]
    assert crypto.hash(b"ab", b"c") == crypto.hash(b"abc")


def test_signature_matches_hypercore(hypercore_vectors: dict[str, Any]) -> None:
    kp = crypto.key_pair(bytes.fromhex(hypercore_vectors["seed"]))
    signable = bytes.fromhex(hypercore_vectors["signable"])
    sig = crypto.sign(signable, kp.secret_key)
    # Hypercore stores the signature inside an encoded multisig proof: 2 header bytes first.
    assert bytes.fromhex(hypercore_vectors["signature"])[2:66] == sig
    assert crypto.verify(signable, sig, kp.public_key)


@pytest.mark.parametrize("flip", range(0, 64 * 8, 37))
def test_verify_rejects_any_flipped_signature_bit(flip: int) -> None:
    kp = crypto.key_pair(b"\x01" * 32)
    sig = bytearray(crypto.sign(b"message", kp.secret_key))
    sig[flip // 8] ^= 1 << (flip % 8)
    assert not crypto.verify(b"message", bytes(sig), kp.public_key)


def test_verify_rejects_wrong_lengths() -> None:
    kp = crypto.key_pair()
    sig = crypto.sign(b"m", kp.secret_key)
    assert not crypto.verify(b"m", sig[:-1], kp.public_key)
    assert not crypto.verify(b"m", sig, kp.public_key[:-1])
    assert not crypto.verify(b"n", sig, kp.public_key)


def test_bad_seed_and_key_lengths_are_typed() -> None:
    with pytest.raises(InvalidKeyError):
        crypto.key_pair(b"short")
    with pytest.raises(InvalidKeyError):
        crypto.discovery_key(b"x" * 31)
    with pytest.raises(InvalidKeyError):
        crypto.sign(b"m", b"x" * 10)


def test_x25519_conversion_agrees_between_halves() -> None:
    kp = crypto.key_pair(b"\x02" * 32)
    from nacl.bindings import crypto_scalarmult_base

    assert crypto_scalarmult_base(crypto.ed25519_sk_to_x25519(kp.secret_key)) == (
        crypto.ed25519_pk_to_x25519(kp.public_key)
    )
