"""Key pairs, signatures and hashes, byte-compatible with hypercore-crypto.

* Signatures are ed25519 (libsodium through PyNaCl's cffi handle: the Python-level wrappers
  cost several microseconds of argument checking per call, which the log's hot path feels).
* ``hash`` is BLAKE2b-256 over the concatenation of its arguments (hashlib's C implementation,
  the fastest BLAKE2b reachable from Python here).
* ``namespace(name, count)`` derives ``count`` 32-byte constants: ``H(H(name) || byte(i))``.
* ``discovery_key(key)`` is BLAKE2b-256 of ``b"hypercore"`` keyed with the log key, so peers can
  announce interest in a log without revealing its key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from nacl import bindings as _sodium_bindings
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from .errors import InvalidKeyError

PUBLIC_KEY_BYTES = 32
SECRET_KEY_BYTES = 64
SEED_BYTES = 32
SIGNATURE_BYTES = 64
HASH_BYTES = 32

_HYPERCORE = b"hypercore"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An ed25519 key pair: 32-byte public key, 64-byte libsodium secret key (seed || public)."""

    public_key: bytes
    secret_key: bytes

    def __repr__(self) -> str:  # never print secret material
        return f"KeyPair(public_key={self.public_key.hex()})"


def key_pair(seed: bytes | None = None) -> KeyPair:
    """A new key pair, deterministic when ``seed`` (32 bytes) is given."""
    if seed is None:
        seed = os.urandom(SEED_BYTES)
    if len(seed) != SEED_BYTES:
        raise InvalidKeyError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    public_key, secret_key = _sodium_bindings.crypto_sign_seed_keypair(seed)
    return KeyPair(public_key=public_key, secret_key=secret_key)


def sign(message: bytes, secret_key: bytes) -> bytes:
    """Detached ed25519 signature (64 bytes) of ``message``."""
    if len(secret_key) != SECRET_KEY_BYTES:
        raise InvalidKeyError(f"secret key must be {SECRET_KEY_BYTES} bytes, got {len(secret_key)}")
    # PyNaCl's cffi module exposes only the attached form: sign, then keep the 64-byte prefix.
    n = len(message)
    signed = _ffi.new("unsigned char[]", n + SIGNATURE_BYTES)
    _lib.crypto_sign(signed, _ffi.NULL, message, n, secret_key)
    return bytes(_ffi.buffer(signed, SIGNATURE_BYTES))


def verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``message`` by ``public_key``."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    n = len(message)
    opened = _ffi.new("unsigned char[]", n + SIGNATURE_BYTES)
    opened_len = _ffi.new("unsigned long long *")
    signed = signature + message
    status = _lib.crypto_sign_open(opened, opened_len, signed, n + SIGNATURE_BYTES, public_key)
    return bool(status == 0)


def hash(*parts: bytes) -> bytes:  # noqa: A001 - the domain's name (hypercore-crypto.hash)
    """BLAKE2b-256 of the concatenation of ``parts``."""
    h = hashlib.blake2b(digest_size=HASH_BYTES)
    for part in parts:
        h.update(part)
    return h.digest()


def namespace(name: str | bytes, count: int) -> list[bytes]:
    """``count`` domain-separation constants derived from ``name``, as hypercore-crypto does."""
    raw = name.encode("utf-8") if isinstance(name, str) else name
    base = hash(raw)
    return [hash(base, bytes([i])) for i in range(count)]


def discovery_key(key: bytes) -> bytes:
    """The public topic for a log: BLAKE2b-256 of ``b"hypercore"`` keyed with the log key."""
    if len(key) != PUBLIC_KEY_BYTES:
        raise InvalidKeyError(f"log key must be {PUBLIC_KEY_BYTES} bytes, got {len(key)}")
    return hashlib.blake2b(_HYPERCORE, digest_size=HASH_BYTES, key=key).digest()


def random_bytes(n: int) -> bytes:
    """Secure random bytes (never used by apply or the linearizer)."""
    return os.urandom(n)


def ed25519_pk_to_x25519(public_key: bytes) -> bytes:
    """The X25519 public key matching an ed25519 public key (libsodium's conversion)."""
    return bytes(_sodium_bindings.crypto_sign_ed25519_pk_to_curve25519(public_key))


def ed25519_sk_to_x25519(secret_key: bytes) -> bytes:
    """The X25519 secret key matching an ed25519 secret key (libsodium's conversion)."""
    return bytes(_sodium_bindings.crypto_sign_ed25519_sk_to_curve25519(secret_key))


__all__ = [
    "HASH_BYTES",
    "PUBLIC_KEY_BYTES",
    "SECRET_KEY_BYTES",
    "SIGNATURE_BYTES",
    "KeyPair",
    "discovery_key",
    "ed25519_pk_to_x25519",
    "ed25519_sk_to_x25519",
    "hash",
    "key_pair",
    "namespace",
    "random_bytes",
    "sign",
    "verify",
]
