"""Log replication over one channel, as a pure state machine (one ``LogSession`` per channel).

Theory of operation
-------------------
Each log that both peers know gets a channel named ``("log", discovery_key)``. Peers announce
only discovery keys; to open the channel each side must also prove it knows the log key: its
OPEN carries ``capability(key, handshake_hash, role)``, a BLAKE2b-256 keyed with the log key
over the connection's handshake hash and the sender's role (initiator or responder), so a
capability cannot be replayed on another connection or reflected back at its sender. A wrong
capability is a protocol violation.

Messages (canonical CBOR maps, field ``t`` names the type)::

    sync     {t: "sync", length, fork}               my signed length and fork (sent on open
                                                     and whenever they change)
    request  {t: "request", id, index, upgrade}      a block (index or null) and/or an upgrade
                                                     from ``upgrade`` (my length, or 0)
    data     {t: "data", id, proof}                  ``encode_proof`` bytes answering ``id``
    none     {t: "none", id}                         cannot serve ``id`` (yet)
    have     {t: "have", start, end}                 blocks [start, end) I said "none" for
                                                     are stored now: ask again

A session that sees the peer ahead (a newer fork, or the same fork and a greater length) asks
for an upgrade from its own length (0 across forks, which also carries the manifest). Once the
length is known it asks for the blocks it wants: every missing block when ``eager``, otherwise
only ranges passed to ``want``. At most ``window`` requests are in flight per session, and
``claims`` (shared by all sessions of one log) keeps two peers from being asked for the same
block at once.

Every proof is verified by ``Log.apply_proof`` before anything is stored. A proof that fails
verification, a malformed message, an answer to a request never made, or an equivocating
signature raises :class:`InvalidPeerDataError` (a ProtocolError: the connection closes and the
reason is logged). ``ProofMismatchError`` is not the peer's fault (another peer moved us
first): the request is simply made again from the new state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .. import encoding
from ..errors import (
    BlockNotAvailableError,
    DecodeError,
    EquivocationError,
    InvalidProofError,
    LocalError,
    OutOfRangeError,
    ProtocolError,
    VerificationError,
)
from ..log import Log, ProofMismatchError, decode_proof, encode_proof

PROTOCOL: Final = "log"
_CAPABILITY_TAG: Final = b"autobase_py/replicate/v1"
DEFAULT_WINDOW: Final = 64


class InvalidPeerDataError(ProtocolError):
    """The peer sent data that failed verification; it is disconnected."""

    code = "INVALID_PEER_DATA"


def capability(log_key: bytes, handshake_hash: bytes, *, initiator: bool) -> bytes:
    """Proof that the sender knows ``log_key``, bound to this connection and the sender's role."""
    role = b"\x01" if initiator else b"\x00"
    return hashlib.blake2b(
        _CAPABILITY_TAG + role + handshake_hash, digest_size=32, key=log_key
    ).digest()


def channel_key(log: Log) -> tuple[str, bytes]:
    return (PROTOCOL, log.discovery_key)


# -- messages --------------------------------------------------------------------------------


def encode_sync(length: int, fork: int) -> bytes:
    return encoding.encode({"t": "sync", "length": length, "fork": fork})


def encode_request(request_id: int, index: int | None, upgrade: int | None) -> bytes:
    return encoding.encode({"t": "request", "id": request_id, "index": index, "upgrade": upgrade})


def encode_data(request_id: int, proof: bytes) -> bytes:
    return encoding.encode({"t": "data", "id": request_id, "proof": proof})


def encode_none(request_id: int) -> bytes:
    return encoding.encode({"t": "none", "id": request_id})


def encode_have(start: int, end: int) -> bytes:
    return encoding.encode({"t": "have", "start": start, "end": end})


_FIELDS: Final = {
    "sync": frozenset({"t", "length", "fork"}),
    "request": frozenset({"t", "id", "index", "upgrade"}),
    "data": frozenset({"t", "id", "proof"}),
    "none": frozenset({"t", "id"}),
    "have": frozenset({"t", "start", "end"}),
}


def _uint_or_none(obj: dict[Any, Any], name: str, what: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise DecodeError(f"{what}: field {name!r} must be an unsigned integer or null")
    return value


def decode_message(data: bytes) -> dict[str, Any]:
    """A checked replication message; InvalidPeerDataError for anything malformed."""
    try:
        obj = encoding.expect_map(encoding.decode(data), "replication message")
        kind = encoding.field(obj, "t", str, "replication message")
        if kind not in _FIELDS or frozenset(obj) != _FIELDS[kind]:
            raise DecodeError(f"replication message: bad type or fields for {kind!r}")
        for name in ("length", "fork", "id", "start", "end"):
            if name in obj:
                value = encoding.field(obj, name, int, kind)
                if not 0 <= value < 2**63:
                    raise DecodeError(f"{kind}: field {name!r} out of range")
        if kind == "request":
            _uint_or_none(obj, "index", kind)
            _uint_or_none(obj, "upgrade", kind)
            if obj["index"] is None and obj["upgrade"] is None:
                raise DecodeError("request: asks for nothing")
        if kind == "data":
            encoding.field(obj, "proof", bytes, kind)
        if kind == "have" and not obj["start"] < obj["end"]:
            raise DecodeError("have: empty range")
    except DecodeError as exc:
        raise InvalidPeerDataError(f"malformed replication message: {exc.message}") from exc
    return obj


def _ranges(indexes: list[int]) -> Iterator[tuple[int, int]]:
    """Sorted distinct indexes as half-open ranges of consecutive runs."""
    start = end = None
    for i in indexes:
        if end is not None and i == end:
            end += 1
            continue
        if start is not None and end is not None:
            yield start, end
        start, end = i, i + 1
    if start is not None and end is not None:
        yield start, end


# -- the session -----------------------------------------------------------------------------


@dataclass(slots=True)
class Claims:
    """Blocks some session of this log has asked a peer for (shared by the log's sessions)."""

    blocks: set[int] = field(default_factory=set)
    contiguous: int = 0  # eager mode: every block below this is stored (at ``fork``)
    fork: int = 0
    releases: int = 0  # bumped whenever a claim is given back without the block stored

    def release(self, index: int) -> None:
        self.blocks.discard(index)
        self.releases += 1


@dataclass(slots=True)
class _Request:
    index: int | None
    upgrade: int | None
    fork: int  # our fork and length when we asked: a mismatch from an unchanged state is
    length: int  # the peer's fault, from a changed state it is just a race


class LogSession:
    """Replication of one log with one peer (sans-IO: messages in, messages out)."""

    def __init__(
        self,
        log: Log,
        claims: Claims | None = None,
        *,
        eager: bool = True,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.log = log
        self.claims = claims if claims is not None else Claims()
        self.eager = eager
        self.window = window
        self.remote_length = 0
        self.remote_fork = 0
        self.remote_synced = False
        self.blocks_received = 0
        self.upgrades_received = 0
        self._wanted: list[tuple[int, int]] = []  # half-open ranges, sparse mode
        self._scan = 0  # eager mode: blocks below this are stored or claimed
        self._scan_fork = log.fork
        self._next_id = 0
        self._inflight: dict[int, _Request] = {}
        self._upgrading = 0  # upgrade requests in flight
        self._upgrade_refused = False  # the peer said "none" to an upgrade: wait for its sync
        # Eager scans resume at ``_frontier`` (everything between the stored prefix and it was
        # claimed when last seen) unless some claim was given back since (``_releases_seen``).
        self._frontier = 0
        self._releases_seen = 0
        self._sent_state: tuple[int, int] | None = None
        self._refused: set[int] = set()  # blocks this peer said it cannot serve (until sync)
        self._owed: set[int] = set()  # blocks we said "none" for: announce when stored

    # -- outgoing ----------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        return self.local_changed()

    def local_changed(self) -> list[bytes]:
        """A sync if our (length, fork) changed since we last told the peer, plus requests."""
        out: list[bytes] = []
        state = (self.log.length, self.log.fork)
        if state != self._sent_state:
            self._sent_state = state
            out.append(encode_sync(*state))
        if self._owed:
            ready = sorted(i for i in self._owed if self.log.has(i))
            self._owed.difference_update(ready)
            out += [encode_have(start, end) for start, end in _ranges(ready)]
        out += self.pump()
        return out

    def want(self, start: int, end: int) -> list[bytes]:
        """Ask for blocks ``[start, end)`` (sparse mode); returns the requests to send."""
        if not 0 <= start <= end:
            raise LocalError(f"bad range [{start}, {end})")
        self._wanted.append((start, end))
        return self.pump()

    def _remote_ahead(self) -> bool:
        log = self.log
        if self.remote_fork != log.fork:
            return self.remote_fork > log.fork
        return self.remote_length > log.length

    def _wanted_blocks(self) -> Iterator[int]:
        log = self.log
        limit = min(log.length, self.remote_length) if self.remote_fork == log.fork else 0
        if self.eager:
            if self._scan_fork != log.fork:
                self._scan, self._scan_fork = 0, log.fork
            # The cursor only passes stored blocks, so a block whose request failed anywhere
            # (peer gone, proof mismatch) is found again on the next pump.
            index = self._scan
            while index < limit and log.has(index):
                index += 1
            self._scan = index
            claims = self.claims
            if claims.fork != log.fork:
                claims.fork, claims.contiguous = log.fork, 0
            claims.contiguous = max(claims.contiguous, index)
            if self._releases_seen != claims.releases:
                self._releases_seen = claims.releases
                self._frontier = index
            for candidate in range(max(index, self._frontier), limit):
                self._frontier = candidate
                yield candidate
        else:
            for start, end in list(self._wanted):
                yield from range(start, min(end, limit))

    def pump(self) -> list[bytes]:
        """Requests to send now (an upgrade if the peer is ahead, then wanted blocks)."""
        out: list[bytes] = []
        if not self.remote_synced or self.log.writable:
            return out
        log = self.log
        if self._remote_ahead() and not self._upgrading and not self._upgrade_refused:
            start = log.length if self.remote_fork == log.fork else 0
            out.append(self._request(None, start))
        claimed = self.claims.blocks
        for index in self._wanted_blocks():
            if len(self._inflight) >= self.window:
                break
            if index in claimed or index in self._refused or log.has(index):
                continue
            claimed.add(index)
            out.append(self._request(index, None))
        if not self.eager:
            self._wanted = [(s, e) for s, e in self._wanted if not self._range_done(s, e)]
        return out

    def _range_done(self, start: int, end: int) -> bool:
        return all(self.log.has(i) for i in range(start, min(end, self.log.length))) and (
            end <= self.log.length
        )

    def _request(self, index: int | None, upgrade: int | None) -> bytes:
        request_id = self._next_id
        self._next_id += 1
        self._inflight[request_id] = _Request(index, upgrade, self.log.fork, self.log.length)
        if upgrade is not None:
            self._upgrading += 1
        return encode_request(request_id, index, upgrade)

    def release(self) -> None:
        """The session ends: give its claimed blocks back to the other sessions."""
        for request in self._inflight.values():
            if request.index is not None:
                self.claims.release(request.index)
        self._inflight.clear()
        self._upgrading = 0

    # -- incoming ----------------------------------------------------------------------------

    def receive(self, data: bytes) -> tuple[list[bytes], bool]:
        """Handle one message: (messages to send, whether the other sessions of this log should
        look again: something was stored, or a claimed block was given back)."""
        msg = decode_message(data)
        kind = msg["t"]
        if kind == "sync":
            self.remote_length, self.remote_fork = msg["length"], msg["fork"]
            self.remote_synced = True
            self._refused.clear()
            self._upgrade_refused = False
            self._frontier = 0  # refused blocks may be back: scan again from the stored prefix
            return self.pump(), False
        if kind == "request":
            return [self._serve(msg["id"], msg["index"], msg["upgrade"])], False
        if kind == "have":
            self._refused.difference_update(range(msg["start"], msg["end"]))
            self._frontier = min(self._frontier, msg["start"])
            return self.pump(), False
        request = self._inflight.pop(msg["id"], None)
        if request is None:
            raise InvalidPeerDataError(f"answer to request {msg['id']}, which is not pending")
        if request.upgrade is not None:
            self._upgrading -= 1
        if kind == "none":
            if request.index is not None:
                self.claims.release(request.index)
            # The peer cannot serve it (a sparse peer, or it truncated): not from this peer
            # until its next sync; other sessions may still fetch it.
            if request.index is not None:
                self._refused.add(request.index)
            if request.upgrade is not None:
                self._upgrade_refused = True  # no asking again (and again) until a new sync
            return self.pump(), request.index is not None
        try:
            stored = self._apply(msg["proof"], request)
        except BaseException:
            if request.index is not None:
                self.claims.release(request.index)
            raise
        if request.index is not None:
            if stored:
                self.claims.blocks.discard(request.index)
            else:
                self.claims.release(request.index)
        return self.local_changed(), stored or request.index is not None

    def _serve(self, request_id: int, index: int | None, upgrade: int | None) -> bytes:
        log = self.log
        try:
            if upgrade is not None and upgrade > log.length:
                return encode_none(request_id)
            proof = log.proof(index, upgrade)
        except (BlockNotAvailableError, OutOfRangeError):
            owe = index is not None and upgrade is None and index < log.length
            if owe and index is not None and len(self._owed) < 4 * self.window:
                self._owed.add(index)  # we will say "have" once it arrives
            return encode_none(request_id)
        return encode_data(request_id, encode_proof(proof))

    def _apply(self, raw: bytes, request: _Request) -> bool:
        log = self.log
        try:
            proof = decode_proof(raw)
        except DecodeError as exc:
            raise InvalidPeerDataError(f"undecodable proof: {exc.message}") from exc
        block = proof.block
        if request.index is not None and (block is None or block.index != request.index):
            raise InvalidPeerDataError("proof does not answer the block that was asked for")
        if request.upgrade is None and proof.upgrade is not None:
            raise InvalidPeerDataError("proof carries an upgrade that was not asked for")
        if request.upgrade is not None:
            if proof.upgrade is None:
                raise InvalidPeerDataError("no upgrade in the answer to an upgrade request")
            if proof.upgrade.start != request.upgrade:
                raise InvalidPeerDataError("upgrade does not start where it was asked to")
        try:
            log.apply_proof(proof)
        except ProofMismatchError as exc:
            if (log.fork, log.length) == (request.fork, request.length):
                raise InvalidPeerDataError(f"proof does not fit the request: {exc}") from exc
            # Our state moved since we asked (another peer was faster): not the peer's fault;
            # the next pump asks again from the new state.
            return False
        except EquivocationError as exc:
            raise InvalidPeerDataError(f"equivocation detected: {exc.message}") from exc
        except (InvalidProofError, VerificationError) as exc:
            raise InvalidPeerDataError(f"invalid proof: {exc.message}") from exc
        if proof.block is not None:
            self.blocks_received += 1
        if proof.upgrade is not None:
            self.upgrades_received += 1
        return True

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def done(self) -> bool:
        """Nothing in flight and nothing more to ask this peer for right now."""
        return not self._inflight and not self._remote_ahead()


__all__ = [
    "DEFAULT_WINDOW",
    "PROTOCOL",
    "Claims",
    "InvalidPeerDataError",
    "LogSession",
    "capability",
    "channel_key",
    "decode_message",
    "encode_data",
    "encode_have",
    "encode_none",
    "encode_request",
    "encode_sync",
]
