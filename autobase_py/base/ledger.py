"""The checkpoint ledger: boundaries this peer confirmed, signatures seen, certificates made.

When the base confirms a boundary (the confirmed prefix up to its last value node) it hands the
ledger the checkpoint, the indexer set that confirmed it and the membership after it. The
ledger signs it when this node is in that set (the signature waits in ``pending`` until an
oplog node carries it), pools the signatures that arrive in other writers' nodes, and
assembles a certificate once a majority of the confirming set signed the very checkpoint this
peer computed. Pooled signatures are verified only when they would complete a certificate (an
invalid one is dropped and the boundary waits for another), so a certified boundary costs one
verification per vote it needed, not one per signature that arrived. A boundary whose
membership changed the indexer set is a *link*: its certificate joins ``chain``, which lets a
reader verify any later certificate from the registry key alone (``checkpoint.verify_chain``).

Storage: certificates and links are records of their own (``base/~certificate``, written once
per cycle by ``write_records``, and ``base/link/<boundary>``); the rest (pending signatures,
open boundaries, newest checkpoint) travels in the base's state record through
``to_wire``/``restore``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import crypto, encoding
from ..storage import Storage
from .checkpoint import Certificate, Checkpoint, CheckpointSignature, assemble
from .events import EventHub
from .system import Membership, majority

_LINK = b"base/link/"  # + u64be(boundary): certificate of an indexer-set change
CERTIFICATE_KEY = _CERT = b"base/~certificate"  # after the per-cycle rows: see core._STATE
_BE64 = struct.Struct(">Q")
MAX_CARRIED = 8  # signatures one oplog node carries at most


@dataclass(slots=True)
class _Boundary:
    checkpoint: Checkpoint
    signing: tuple[bytes, ...]
    membership: Membership
    link: bool


class CheckpointLedger:
    def __init__(
        self,
        registry_key: bytes,
        storage: Storage,
        key_pair: crypto.KeyPair,
        local_key: bytes,
        events: EventHub,
    ) -> None:
        self._key = registry_key
        self._storage = storage
        self._key_pair = key_pair
        self._local_key = local_key
        self._events = events
        self._boundaries: dict[int, _Boundary] = {}
        # boundary -> signer writer key -> (signature, verified yet)
        self._pool: dict[int, dict[bytes, tuple[CheckpointSignature, bool]]] = {}
        self.pending: list[CheckpointSignature] = []
        self.checkpoint: Checkpoint | None = None  # the newest confirmed checkpoint computed
        self.certificate: Certificate | None = None
        self.chain: list[Certificate] = []
        self._certificate_dirty = False  # ``certificate`` changed since ``write_records``

    @property
    def signed_length(self) -> int:
        return 0 if self.certificate is None else self.certificate.checkpoint.confirmed_length

    def confirmed(
        self,
        checkpoint: Checkpoint,
        signing: tuple[bytes, ...],
        membership: Membership,
        *,
        link: bool,
    ) -> None:
        """This peer confirmed ``checkpoint``'s boundary under the indexer set ``signing``."""
        boundary = checkpoint.confirmed_length
        self.checkpoint = checkpoint
        self._boundaries[boundary] = _Boundary(checkpoint, signing, membership.copy(), link)
        if self._local_key in signing:
            signature = CheckpointSignature.create(checkpoint, self._key_pair)
            self.pending.append(signature)
            self._pool.setdefault(boundary, {})[self._local_key] = (signature, True)
        self._certify()

    def collect(self, signatures: Sequence[CheckpointSignature]) -> None:
        """Signatures found in an oplog node; still useful ones are pooled. A signature is
        verified only when it would complete a certificate (``_certify``), so a boundary costs
        one verification per missing vote, not one per signature that arrives."""
        newest = self.signed_length
        own = self._key_pair.public_key
        pooled = False  # only a new entry can complete a certificate
        for sig in signatures:
            boundary = sig.confirmed_length
            open_link = (b := self._boundaries.get(boundary)) is not None and b.link
            if boundary <= newest and not open_link:
                continue
            pool = self._pool.setdefault(boundary, {})
            if sig.public_key == own:  # from our own oplog: we made it, no need to verify
                if pool.get(self._local_key) != (sig, True):
                    pool[self._local_key] = (sig, True)
                    pooled = True
                continue
            signer = sig.signer
            if pool.get(signer, (None, False))[1]:
                continue  # a verified one from this signer is already here
            pool[signer] = (sig, False)
            pooled = True
        if pooled:
            self._certify()

    def take_pending(self) -> tuple[CheckpointSignature, ...]:
        """The signatures the next local oplog node carries (the newest few)."""
        carried = tuple(self.pending[-MAX_CARRIED:])
        self.pending.clear()
        return carried

    def _votes(self, boundary: int, info: _Boundary) -> list[CheckpointSignature]:
        """Verified signatures of the confirming set over exactly this boundary's checkpoint,
        verifying pooled ones only while a majority is still possible and not yet reached."""
        pool = self._pool.get(boundary)
        if not pool:
            return []
        allowed = set(info.signing)
        need = majority(info.signing)
        matching = {
            signer: entry
            for signer, entry in pool.items()
            if signer in allowed and entry[0].checkpoint(self._key) == info.checkpoint
        }
        if len(matching) < need:
            return []
        votes: list[CheckpointSignature] = []
        for signer, (sig, verified) in sorted(matching.items(), key=lambda kv: not kv[1][1]):
            if len(votes) >= need:
                break
            if not verified:
                if not sig.verify(self._key):
                    del pool[signer]  # an invalid signature: drop it, wait for a good one
                    continue
                pool[signer] = (sig, True)
            votes.append(sig)
        return votes if len(votes) >= need else []

    def _certify(self) -> None:
        changed = False
        for boundary in sorted(self._boundaries):
            info = self._boundaries[boundary]
            votes = self._votes(boundary, info)
            if not votes:
                continue
            cert = assemble(self._key, votes, info.membership, info.signing, verified=True)
            if cert is None or cert.checkpoint != info.checkpoint:
                continue
            if info.link:
                self.chain.append(cert)
                self._storage.put(_LINK + _BE64.pack(boundary), cert.encode())
            if self.certificate is None or boundary > self.signed_length:
                self.certificate = cert
                self._certificate_dirty = True
                changed = True
            del self._boundaries[boundary]
            self._pool.pop(boundary, None)
        if self.certificate is not None:
            newest = self.signed_length
            for boundary in [b for b in self._boundaries if b < newest]:
                if not self._boundaries[boundary].link:
                    del self._boundaries[boundary]
                    self._pool.pop(boundary, None)
        if changed:
            self._events.publish("certified", length=self.signed_length)

    # --- persistence ----------------------------------------------------------------------

    def write_records(self) -> None:
        """Store the newest certificate if it changed (once per cycle, in its transaction:
        a cycle can assemble several, only the last one matters)."""
        if self._certificate_dirty and self.certificate is not None:
            self._storage.put(_CERT, encoding.encode_trusted(self.certificate.to_wire()))
        self._certificate_dirty = False

    def fingerprint(self) -> tuple[Any, ...]:
        return (tuple(s.signature for s in self.pending), tuple(self._boundaries), self.checkpoint)

    def to_wire(self) -> dict[str, Any]:
        return {
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_wire(),
            "pending": [s.to_wire() for s in self.pending],
            "boundaries": [
                [b, info.checkpoint.to_wire(), list(info.signing), info.membership.to_wire(),
                 info.link]
                for b, info in sorted(self._boundaries.items())
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.pending = [CheckpointSignature.from_wire(s) for s in state.get("pending", [])]
        if state.get("checkpoint") is not None:
            self.checkpoint = Checkpoint.from_wire(self._key, state["checkpoint"])
        for boundary in state.get("boundaries", []):
            self._boundaries[boundary[0]] = _Boundary(
                Checkpoint.from_wire(self._key, boundary[1]),
                tuple(boundary[2]),
                Membership.from_wire(boundary[3]),
                bool(boundary[4]),
            )
        for _, v in self._storage.iterate(_LINK):
            self.chain.append(Certificate.from_wire(self._key, encoding.decode(v)))
        cert = self._storage.get(_CERT)
        if cert is not None:
            self.certificate = Certificate.from_wire(self._key, encoding.decode(cert))


__all__ = ["CERTIFICATE_KEY", "CheckpointLedger"]
