"""Noise_XX_25519_ChaChaPoly_BLAKE2b, as a pure state machine, plus the identity layer on top.

Theory of operation
-------------------
``NoiseXX`` is the Noise Protocol Framework (revision 34) specialised to one pattern::

    -> e
    <- e, ee, s, es
    -> s, se

with X25519 for DH, ChaCha20-Poly1305 (IETF, 96-bit nonce = 4 zero bytes + u64 LE counter) for
the AEAD and BLAKE2b (HASHLEN 64) for the hash, HMAC and HKDF. It never touches a socket or a
clock: ``write_message(payload) -> bytes`` and ``read_message(bytes) -> payload`` move it
forward; after the third message ``split()`` gives the two transport keys and
``handshake_hash`` the channel binding. Any failure (bad length, failed AEAD tag, low-order
point) raises :class:`HandshakeError` and leaves the object unusable.

``Handshake`` is what the rest of the library uses. Each node has one ed25519 key pair; its
X25519 static key is derived with libsodium's conversion. Because the conversion maps both
``P`` and ``-P`` to the same X25519 key, a DH alone does not pin the ed25519 key, so the second
and third messages carry an identity payload: ``ed25519 public key (32) || signature (64)``
where the signature covers a domain tag and the handshake hash *just before the payload is
encrypted* (which already commits to both ephemerals and the sender's static key). The reader
checks that the claimed key converts to the static key it just authenticated, that the
signature verifies, and, if asked, that it is the key it wanted to reach.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nacl import bindings as _sodium

from .. import crypto
from ..errors import HandshakeError, LocalError

PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROLOGUE: Final = b"autobase_py/net/v1"
HASHLEN: Final = 64
DHLEN: Final = 32
TAGLEN: Final = 16
KEYLEN: Final = 32
IDENTITY_BYTES: Final = crypto.PUBLIC_KEY_BYTES + crypto.SIGNATURE_BYTES
_IDENTITY_TAG: Final = b"autobase_py/net/handshake/v1"
_MAX_NONCE: Final = 2**64 - 1


def _blake2b(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASHLEN).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2


def dh(secret_key: bytes, public_key: bytes) -> bytes:
    """X25519; a low-order or malformed remote point is a handshake failure."""
    try:
        return bytes(_sodium.crypto_scalarmult(secret_key, public_key))
    except Exception as exc:  # libsodium refuses all-zero outputs (low-order points)
        raise HandshakeError(f"invalid X25519 point: {exc}") from exc


def x25519_key_pair(secret_key: bytes | None = None) -> tuple[bytes, bytes]:
    """(secret, public) X25519 pair; random unless ``secret_key`` is given."""
    sk = crypto.random_bytes(DHLEN) if secret_key is None else secret_key
    return sk, bytes(_sodium.crypto_scalarmult_base(sk))


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class CipherState:
    """A key and a counter; encrypt/decrypt with associated data (Noise section 5.1)."""

    __slots__ = ("key", "nonce")

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key
        self.nonce = 0

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.key is None:
            return plaintext
        if self.nonce >= _MAX_NONCE:
            raise LocalError("noise nonce exhausted")
        out = _sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, ad, _nonce(self.nonce), self.key
        )
        self.nonce += 1
        return bytes(out)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.key is None:
            return ciphertext
        if self.nonce >= _MAX_NONCE:
            raise HandshakeError("noise nonce exhausted")
        try:
            out = _sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _nonce(self.nonce), self.key
            )
        except Exception as exc:
            raise HandshakeError("handshake message failed authentication") from exc
        self.nonce += 1
        return bytes(out)


class SymmetricState:
    """Chaining key, handshake hash and the current cipher (Noise section 5.2)."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _blake2b(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = _blake2b(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = _hkdf2(self.ck, b"")
        return k1[:KEYLEN], k2[:KEYLEN]


class NoiseXX:
    """The raw XX pattern with arbitrary payloads (cross-checked against ``noiseprotocol``).

    ``payload_hash`` is the handshake hash right before the last payload was encrypted or
    decrypted; the identity layer signs it.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        static_secret: bytes,
        prologue: bytes = PROLOGUE,
        ephemeral_secret: bytes | None = None,
    ) -> None:
        self.initiator = initiator
        self._s_secret, self.static_public = x25519_key_pair(static_secret)
        self._e_secret, self.ephemeral_public = x25519_key_pair(ephemeral_secret)
        self._sym = SymmetricState(PROTOCOL_NAME)
        self._sym.mix_hash(prologue)
        self._re: bytes | None = None
        self.remote_static: bytes | None = None
        self.step = 0  # messages processed so far: 0..3
        self.payload_hash = b""
        self._failed = False

    # -- helpers -----------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.step == 3

    @property
    def handshake_hash(self) -> bytes:
        if not self.complete:
            raise LocalError("handshake not complete")
        return self._sym.h

    def _my_turn(self) -> bool:
        return (self.step % 2 == 0) == self.initiator

    def split(self) -> tuple[bytes, bytes]:
        """(send key, receive key) for this side."""
        if not self.complete:
            raise LocalError("handshake not complete")
        k1, k2 = self._sym.split()
        return (k1, k2) if self.initiator else (k2, k1)

    # -- the pattern -------------------------------------------------------------------------

    def write_message(self, payload: bytes | Callable[[bytes], bytes] = b"") -> bytes:
        """The next handshake message; ``payload`` may be a function of ``payload_hash``."""
        if self._failed or self.complete or not self._my_turn():
            raise LocalError("not this side's turn to write a handshake message")
        sym = self._sym
        out = bytearray()
        if self.step == 0:  # -> e
            out += self.ephemeral_public
            sym.mix_hash(self.ephemeral_public)
        elif self.step == 1:  # <- e, ee, s, es
            assert self._re is not None and self.remote_static is None
            out += self.ephemeral_public
            sym.mix_hash(self.ephemeral_public)
            sym.mix_key(dh(self._e_secret, self._re))
            out += sym.encrypt_and_hash(self.static_public)
            sym.mix_key(dh(self._s_secret, self._re))
        else:  # -> s, se
            assert self._re is not None
            out += sym.encrypt_and_hash(self.static_public)
            sym.mix_key(dh(self._s_secret, self._re))
        self.payload_hash = sym.h
        body = payload(sym.h) if callable(payload) else payload
        out += sym.encrypt_and_hash(body)
        self.step += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if self._failed or self.complete or self._my_turn():
            raise LocalError("not this side's turn to read a handshake message")
        try:
            payload = self._read(bytes(message))
        except HandshakeError:
            self._failed = True
            raise
        self.step += 1
        return payload

    def _read(self, msg: bytes) -> bytes:
        sym = self._sym
        if self.step == 0:  # -> e
            if len(msg) < DHLEN:
                raise HandshakeError("first handshake message too short")
            self._re, rest = msg[:DHLEN], msg[DHLEN:]
            sym.mix_hash(self._re)
        elif self.step == 1:  # <- e, ee, s, es
            if len(msg) < DHLEN + DHLEN + TAGLEN + TAGLEN:
                raise HandshakeError("second handshake message too short")
            self._re = msg[:DHLEN]
            sym.mix_hash(self._re)
            sym.mix_key(dh(self._e_secret, self._re))
            self.remote_static = sym.decrypt_and_hash(msg[DHLEN : 2 * DHLEN + TAGLEN])
            sym.mix_key(dh(self._e_secret, self.remote_static))
            rest = msg[2 * DHLEN + TAGLEN :]
        else:  # -> s, se
            if len(msg) < DHLEN + TAGLEN + TAGLEN:
                raise HandshakeError("third handshake message too short")
            assert self._re is not None
            self.remote_static = sym.decrypt_and_hash(msg[: DHLEN + TAGLEN])
            sym.mix_key(dh(self._e_secret, self.remote_static))
            rest = msg[DHLEN + TAGLEN :]
        self.payload_hash = sym.h
        return sym.decrypt_and_hash(rest)


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What a finished handshake established."""

    remote_public_key: bytes  # the peer's ed25519 key
    handshake_hash: bytes  # 64 bytes; the channel binding (capabilities are keyed with it)
    send_key: bytes
    receive_key: bytes


class Handshake:
    """Noise XX carrying and proving both sides' ed25519 keys.

    Drive it with ``write()``/``read(message)``: the initiator writes, reads, writes; the
    responder reads, writes, reads. ``result`` is set once ``complete``.
    """

    def __init__(
        self,
        key_pair: crypto.KeyPair,
        *,
        initiator: bool,
        expected_remote_key: bytes | None = None,
        ephemeral_secret: bytes | None = None,
    ) -> None:
        self.key_pair = key_pair
        self.expected_remote_key = expected_remote_key
        self.noise = NoiseXX(
            initiator=initiator,
            static_secret=crypto.ed25519_sk_to_x25519(key_pair.secret_key),
            ephemeral_secret=ephemeral_secret,
        )
        self.remote_public_key: bytes | None = None
        self.result: HandshakeResult | None = None

    @property
    def initiator(self) -> bool:
        return self.noise.initiator

    @property
    def complete(self) -> bool:
        return self.result is not None

    @property
    def wants_to_write(self) -> bool:
        return not self.noise.complete and self.noise._my_turn()

    def write(self) -> bytes:
        if self.noise.step == 0:
            message = self.noise.write_message(b"")
        else:
            message = self.noise.write_message(self._identity)
        self._finish_if_complete()
        return message

    def _identity(self, payload_hash: bytes) -> bytes:
        signature = crypto.sign(_IDENTITY_TAG + payload_hash, self.key_pair.secret_key)
        return self.key_pair.public_key + signature

    def read(self, message: bytes) -> None:
        noise = self.noise
        expected = {0: DHLEN, 1: 2 * DHLEN + 2 * TAGLEN + IDENTITY_BYTES}.get(
            noise.step, DHLEN + 2 * TAGLEN + IDENTITY_BYTES
        )
        if len(message) != expected:
            raise HandshakeError(
                f"handshake message {noise.step + 1} is {len(message)} bytes, expected {expected}"
            )
        payload = noise.read_message(message)
        if noise.step > 1:
            self._check_identity(payload)
        self._finish_if_complete()

    def _check_identity(self, payload: bytes) -> None:
        noise = self.noise
        public_key = payload[: crypto.PUBLIC_KEY_BYTES]
        signature = payload[crypto.PUBLIC_KEY_BYTES :]
        try:
            converted = crypto.ed25519_pk_to_x25519(public_key)
        except Exception as exc:
            raise HandshakeError("remote ed25519 key is not a valid point") from exc
        if converted != noise.remote_static:
            raise HandshakeError("remote ed25519 key does not match its Noise static key")
        if not crypto.verify(_IDENTITY_TAG + noise.payload_hash, signature, public_key):
            raise HandshakeError("remote identity signature is invalid")
        if self.expected_remote_key is not None and public_key != self.expected_remote_key:
            raise HandshakeError("remote key is not the expected one")
        self.remote_public_key = public_key

    def _finish_if_complete(self) -> None:
        if self.noise.complete and self.result is None:
            assert self.remote_public_key is not None
            send_key, receive_key = self.noise.split()
            self.result = HandshakeResult(
                remote_public_key=self.remote_public_key,
                handshake_hash=self.noise.handshake_hash,
                send_key=send_key,
                receive_key=receive_key,
            )


__all__ = [
    "DHLEN",
    "HASHLEN",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "CipherState",
    "Handshake",
    "HandshakeResult",
    "NoiseXX",
    "SymmetricState",
    "dh",
    "x25519_key_pair",
]
