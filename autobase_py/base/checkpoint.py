"""Checkpoints, indexer signatures and quorum certificates.

A **checkpoint** describes the confirmed state at a commit boundary::

    (registry key, epoch, confirmed length, view length, view tree hash, system state hash)

An indexer signs it with the key pair of its writer log and carries the
:class:`CheckpointSignature` in its next oplog node. Its identity as an indexer is its writer
key, which is the hash of the log's manifest; the signature carries the ed25519 public key, and
a verifier recomputes the writer key from it (``Manifest.single(pk).key()``), so nothing but
the registry key is needed to check who signed.

A **certificate** is one checkpoint plus the signatures of a majority of the indexer set that
confirmed it, plus the membership (whose hash the checkpoint signs), so the verifier learns the
indexer set that holds from then on. Verification needs only the registry key (its genesis
indexer set is the bootstrap writer) and the *chain*: one certificate per indexer-set change,
in order, each signed by a majority of the set before it. The view's key never changes;
readers follow this chain instead.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import crypto, encoding
from ..errors import DecodeError, InvalidSignatureError, VerificationError
from ..log.merkle import Manifest
from .system import Membership, majority

_NS = crypto.namespace("autobase_py/checkpoint", 1)[0]
_U64 = struct.Struct("<Q")


@functools.lru_cache(maxsize=1024)
def writer_key(public_key: bytes) -> bytes:
    """The writer key (manifest hash) of a single-signer log signed by ``public_key``."""
    return Manifest.single(public_key).key()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    registry_key: bytes
    epoch: int
    confirmed_length: int
    view_length: int
    view_tree_hash: bytes
    system_hash: bytes

    def signable(self) -> bytes:
        return b"".join(
            (
                _NS,
                self.registry_key,
                _U64.pack(self.epoch),
                _U64.pack(self.confirmed_length),
                _U64.pack(self.view_length),
                self.view_tree_hash,
                self.system_hash,
            )
        )

    def to_wire(self) -> list[Any]:
        return [
            self.epoch,
            self.confirmed_length,
            self.view_length,
            self.view_tree_hash,
            self.system_hash,
        ]

    @classmethod
    def from_wire(cls, registry_key: bytes, obj: Any) -> Checkpoint:
        if (
            not isinstance(obj, list)
            or len(obj) != 5
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in obj[:3])
            or not all(isinstance(x, bytes) and len(x) == 32 for x in obj[3:])
        ):
            raise DecodeError("checkpoint: expected [epoch, confirmed, view length, 2 hashes]")
        return cls(registry_key, obj[0], obj[1], obj[2], obj[3], obj[4])


@dataclass(frozen=True, slots=True)
class CheckpointSignature:
    """One indexer's signature over a checkpoint (the registry key is implied by context)."""

    epoch: int
    confirmed_length: int
    view_length: int
    view_tree_hash: bytes
    system_hash: bytes
    public_key: bytes
    signature: bytes

    @classmethod
    def create(cls, checkpoint: Checkpoint, key_pair: crypto.KeyPair) -> CheckpointSignature:
        sig = crypto.sign(checkpoint.signable(), key_pair.secret_key)
        return cls(
            checkpoint.epoch,
            checkpoint.confirmed_length,
            checkpoint.view_length,
            checkpoint.view_tree_hash,
            checkpoint.system_hash,
            key_pair.public_key,
            sig,
        )

    def checkpoint(self, registry_key: bytes) -> Checkpoint:
        return Checkpoint(
            registry_key,
            self.epoch,
            self.confirmed_length,
            self.view_length,
            self.view_tree_hash,
            self.system_hash,
        )

    @property
    def signer(self) -> bytes:
        """The writer key of the signer (hash of its log's manifest)."""
        return writer_key(self.public_key)

    def verify(self, registry_key: bytes) -> bool:
        return crypto.verify(
            self.checkpoint(registry_key).signable(), self.signature, self.public_key
        )

    def to_wire(self) -> list[Any]:
        return [
            self.epoch,
            self.confirmed_length,
            self.view_length,
            self.view_tree_hash,
            self.system_hash,
            self.public_key,
            self.signature,
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> CheckpointSignature:
        if not isinstance(obj, list) or len(obj) != 7:
            raise DecodeError("checkpoint signature: expected a 7-item list")
        cp = Checkpoint.from_wire(b"", obj[:5])
        if not isinstance(obj[5], bytes) or len(obj[5]) != 32:
            raise DecodeError("checkpoint signature: public key must be 32 bytes")
        if not isinstance(obj[6], bytes) or len(obj[6]) != 64:
            raise DecodeError("checkpoint signature: signature must be 64 bytes")
        return cls(
            cp.epoch,
            cp.confirmed_length,
            cp.view_length,
            cp.view_tree_hash,
            cp.system_hash,
            obj[5],
            obj[6],
        )


@dataclass(frozen=True, slots=True)
class Certificate:
    checkpoint: Checkpoint
    membership: Membership
    signatures: tuple[tuple[bytes, bytes], ...]  # (public key, signature), sorted

    def to_wire(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint.to_wire(),
            "membership": self.membership.to_wire(),
            "signatures": [[pk, sig] for pk, sig in self.signatures],
        }

    @classmethod
    def from_wire(cls, registry_key: bytes, obj: Any) -> Certificate:
        m = encoding.expect_map(obj, "certificate")
        cp = Checkpoint.from_wire(registry_key, m.get("checkpoint"))
        membership = Membership.from_wire(m.get("membership"))
        raw = m.get("signatures")
        if not isinstance(raw, list) or not raw:
            raise DecodeError("certificate: signatures must be a non-empty list")
        sigs: list[tuple[bytes, bytes]] = []
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], bytes)
                or len(item[0]) != 32
                or not isinstance(item[1], bytes)
                or len(item[1]) != 64
            ):
                raise DecodeError("certificate: a signature must be [32-byte key, 64 bytes]")
            sigs.append((item[0], item[1]))
        return cls(cp, membership, tuple(sigs))

    def encode(self) -> bytes:
        return encoding.encode(self.to_wire())


def assemble(
    registry_key: bytes,
    signatures: Iterable[CheckpointSignature],
    membership: Membership,
    signing_indexers: Sequence[bytes],
    *,
    verified: bool = False,
) -> Certificate | None:
    """A certificate when a majority of ``signing_indexers`` signed the same checkpoint.

    ``verified=True`` skips re-checking signatures the caller already verified on arrival."""
    allowed = set(signing_indexers)
    by_checkpoint: dict[Checkpoint, dict[bytes, bytes]] = {}
    for s in signatures:
        if s.signer in allowed and (verified or s.verify(registry_key)):
            by_checkpoint.setdefault(s.checkpoint(registry_key), {})[s.public_key] = s.signature
    need = majority(signing_indexers)
    best: Certificate | None = None
    for cp, sigs in by_checkpoint.items():
        if len(sigs) >= need and cp.system_hash == membership.hash():
            cert = Certificate(cp, membership, tuple(sorted(sigs.items())))
            if best is None or cp.confirmed_length > best.checkpoint.confirmed_length:
                best = cert
    return best


def verify_certificate(cert: Certificate, indexers: Sequence[bytes]) -> None:
    """Raise unless a majority of ``indexers`` signed ``cert``'s checkpoint and it is whole."""
    if cert.membership.hash() != cert.checkpoint.system_hash:
        raise VerificationError("certificate: membership does not match the signed system hash")
    allowed = set(indexers)
    signers: set[bytes] = set()
    message = cert.checkpoint.signable()
    for public_key, signature in cert.signatures:
        writer = writer_key(public_key)
        if writer not in allowed:
            raise VerificationError("certificate: signed by a key outside the indexer set")
        if not crypto.verify(message, signature, public_key):
            raise InvalidSignatureError("certificate: invalid indexer signature")
        signers.add(writer)
    if len(signers) < majority(indexers):
        raise VerificationError(
            f"certificate: {len(signers)} of {len(indexers)} indexers signed; "
            f"{majority(indexers)} needed"
        )


def verify_chain(registry_key: bytes, chain: Sequence[Certificate], cert: Certificate) -> None:
    """Verify ``cert`` from the registry key alone, following the chain of indexer-set changes.

    The genesis indexer set is the bootstrap writer (whose writer key is the registry key).
    Each chain certificate must be signed by a majority of the set in force before it and
    hands over to the indexer set of its membership; epochs must increase.
    """
    indexers: tuple[bytes, ...] = (registry_key,)
    epoch = 0
    for link in [*chain, cert]:
        if link.checkpoint.registry_key != registry_key:
            raise VerificationError("certificate: made for another registry")
        if link.checkpoint.epoch < epoch:
            raise VerificationError("certificate chain: epochs go backwards")
        verify_certificate(link, indexers)
        indexers = link.membership.indexers
        epoch = link.checkpoint.epoch


__all__ = [
    "Certificate",
    "Checkpoint",
    "CheckpointSignature",
    "assemble",
    "verify_certificate",
    "verify_chain",
]
