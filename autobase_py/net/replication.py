"""Log replication over one channel, as a pure state machine (one ``LogSession`` per channel).

Theory of operation
-------------------
Each log that both peers know gets a channel named ``("log", discovery_key)``. Peers announce
only discovery keys; to open the channel each side must also prove it knows the log key: its
OPEN carries ``capability(key, handshake_hash, role)``, a BLAKE2b-256 keyed with the log key
over the connection's handshake hash and the sender's role (initiator or responder), so a
capability cannot be replayed on another connection or reflected back at its sender. A wrong
capability is a protocol violation. The messages are in :mod:`.replication_wire`.

A session that sees the peer ahead (a newer fork, or the same fork and a greater length) asks
for an upgrade from its own length (0 across forks, which also carries the manifest). An eager
session following a live log (same fork, length > 0) asks for the first new block in the same
request (unless another session claimed it), so a block appended at the writer reaches a
replica in one round trip; a server lacking that block answers with the upgrade alone. Once the
length is known it asks for the blocks it wants: every missing block when ``eager``, otherwise
only ranges passed to ``want``. A range answer's uncles reach the *server's* roots, so a peer
shorter than us is asked only for blocks under our roots that end within its length
(``provable_limit``). Blocks are asked for in *ranges*: consecutive wanted blocks, up
to ``range_size`` of them, go into one ``range`` request, answered by one ``blocks`` message
(the server may answer a prefix only: a size cap, or it lacks a block; the rest is asked for
again). At most ``window`` requests are in flight per session, and ``claims`` (shared by all
sessions of one log) keeps two peers from being asked for the same block at once.

Every block is verified before it is stored: the blocks of one answer go to
``Log.apply_blocks`` as one range (its uncles filed by flat index), which hashes them bottom-up
once up to the replica's roots and stores them in one storage transaction (a savepoint inside
the adapter's transaction), so an answer is stored whole or not at all. Upgrades go through
``Log.apply_proof``. A proof that fails verification, a malformed message,
an answer to a request never made (or not answering what was asked), or an equivocating
signature raises :class:`InvalidPeerDataError` (a ProtocolError: the connection closes and the
reason is logged). ``ProofMismatchError`` is not the peer's fault when our state moved since
we asked (another peer moved us first): the request is simply made again from the new state.
Nor is a range answer that fails to verify after our length moved (we may have outgrown the
server's roots meanwhile); from an unchanged state it is.
An answer built for another fork is dropped without blame; its blocks are not asked of that
peer again until its next sync.

No sync answers an upgrade. A server that answers an upgrade request from exactly the state
the requester last synced (same fork) counts the requester at its own length from then on, as
if it had synced; the requester, once it stored that answer, counts the sync as sent, unless
it sent a sync after the request (which reaches the server after the answer left, and
overrides the server's assumption there too). Both sides apply the same rule to the same
ordered streams, so they keep agreeing on what the server knows, without the message the
server could always predict: in live following, one sync per appended block and replica.

Following a live log in one hop (wire version 4). Above, a block appended at the writer needs
three messages to reach a replica (sync, request, data) and a chunk of them five (then range,
blocks), each hop costing the sender's and receiver's scheduling. Instead an eager replica
that is synced with a peer at its own fork, sees it not ahead, and has no upgrade in flight
there, leaves a standing request with it: ``follow`` (its length L and fork). Only the log's
writer holds it (at most one per session; a second one is a protocol violation); anyone else
answers "none", and the replica does not follow that peer again at that fork but asks it the
old way. The writer answers it as soon as it has grown past L, in ``local_changed`` (which runs
right before the connection's next write, see :mod:`.replication_trio`), or at once if it is
already past L when the follow arrives, with one ``tip``: the upgrade from L to its length N
plus blocks [L, L + TIP_BLOCKS) (up to ``MAX_ANSWER_BYTES``) and their uncles up to the roots
of N (``Log.range_proof``). The replica verifies and stores all of it as one range
(``Log.apply_range``: after the upgrade its roots are the writer's, so the range verifies) and
sends its next follow in the same breath; the rest of a longer run, if any, it asks for in
ranges as before. A held follow is answered "none" when the writer moves to another fork (its
sync, right after, says where), and forgotten with the session.

A tip is the writer's sync too (it sends no other for that state) and follows the rule above:
the writer counts the replica at N if it last synced exactly L, and the replica, having stored
the tip with no sync sent since its follow, counts that sync as sent. Its blocks were never
claimed: another session's claim on one of them (asked before the follow) is given back when
that request's answer fails to fit. While a follow is in flight in any session of a log, no
session asks anyone for an upgrade (the writer's tip is coming, and an upgrade from a relay
would race it and make it no longer fit). So a half-open link to the writer holds the log back
until the connection notices the silence (``idle_timeout``, 20 s by default: see
``connection.py``) and closes; the session ends with it, and relays are asked again. A tip
that arrives after the replica moved through another session no longer fits: nothing is
stored, nobody blamed, as for a data answer. Every malformed or lying tip (a proof that is not
exactly one upgrade from L at the follow's fork, blocks past N, a value or uncle that does not
verify) is an InvalidPeerDataError.

Version 3 peers do not know ``follow``/``tip``: a version-4 session says it speaks them with
``VERSION_MARK`` (a "have" no log can reach, which version 3 ignores), and follows only peers
that sent it; ``LogSession(version=3)`` behaves, and refuses those messages, as version 3 did.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import (
    BlockNotAvailableError,
    DecodeError,
    EquivocationError,
    InvalidProofError,
    LocalError,
    OutOfRangeError,
    VerificationError,
)
from ..log import (
    Log,
    Proof,
    ProofMismatchError,
    RangeProof,
    blocks_within,
    decode_proof,
    encode_proof,
)
from .replication_wire import (
    MAX_RANGE,
    MAX_TIP,
    MAX_UINT,
    V3_TYPES,
    VERSION_MARK,
    WIRE_VERSION,
    InvalidPeerDataError,
    RangeTree,
    decode_message,
    encode_blocks,
    encode_data,
    encode_follow,
    encode_have,
    encode_none,
    encode_range,
    encode_request,
    encode_sync,
    encode_tip,
    pack_uncles,
    ranges,
    shared_uncles,
    unpack_uncles,
)

PROTOCOL: Final = "log"
_CAPABILITY_TAG: Final = b"autobase_py/replicate/v1"
DEFAULT_WINDOW: Final = 64  # requests in flight per session
DEFAULT_RANGE: Final = 128  # blocks per range request
MAX_ANSWER_BYTES: Final = 1 << 20  # a blocks answer stops growing past this many bytes
_BLOCK_OVERHEAD: Final = 80  # bytes an answer spends per block besides its value (uncles)
TIP_BLOCKS: Final = MAX_TIP  # blocks a tip carries at most (and MAX_ANSWER_BYTES)
_MAX_OWED: Final = 1 << 16  # blocks we said "none" for and will announce with "have"
_SCAN_OWED: Final = 256  # up to this many owed blocks are looked up one by one
_MAX_ARRIVALS: Final = 1024  # stored ranges remembered for sessions that owe blocks
_ranges = ranges  # the old private name
_UNCLE: Final = struct.Struct("<Q32s")  # one packed uncle: size (u64 LE), hash
_NONE_HEAD: Final = encode_none(0)[:-1]  # every "none" starts with this


def capability(log_key: bytes, handshake_hash: bytes, *, initiator: bool) -> bytes:
    """Proof that the sender knows ``log_key``, bound to this connection and the sender's role."""
    role = b"\x01" if initiator else b"\x00"
    return hashlib.blake2b(
        _CAPABILITY_TAG + role + handshake_hash, digest_size=32, key=log_key
    ).digest()


def channel_key(log: Log) -> tuple[str, bytes]:
    return (PROTOCOL, log.discovery_key)


def provable_limit(length: int, peer_length: int) -> int:
    """Blocks below this can be asked of a peer at ``peer_length`` by a replica at ``length``
    (same fork): a range answer carries uncles up to the *peer's* roots, so every root of ours
    over the blocks asked for must end within the peer's length. Our roots split ``length``
    by its binary digits, high to low; the limit is the last of their ends not past the peer."""
    if peer_length >= length:
        return length
    limit = 0
    for shift in range(length.bit_length() - 1, -1, -1):
        size = 1 << shift
        if length & size:
            if limit + size > peer_length:
                break
            limit += size
    return limit


# -- the session -----------------------------------------------------------------------------


@dataclass(slots=True)
class Claims:
    """Blocks some session of this log has asked a peer for (shared by the log's sessions)."""

    blocks: set[int] = field(default_factory=set)
    contiguous: int = 0  # eager mode: every block below this is stored (at ``fork``)
    fork: int = 0
    releases: int = 0  # bumped whenever a claim is given back without the block stored
    arrivals: list[tuple[int, int]] = field(default_factory=list)  # recently stored ranges
    arrivals_start: int = 0  # the sequence number of ``arrivals[0]``
    following: int = 0  # sessions with a follow in flight (they ask nobody for upgrades)

    def release(self, index: int) -> None:
        self.blocks.discard(index)
        self.releases += 1

    def release_range(self, start: int, end: int) -> None:
        self.blocks.difference_update(range(start, end))
        self.releases += 1

    def arrived(self, start: int, end: int, fork: int) -> None:
        """Blocks ``[start, end)`` of ``fork`` were stored (sessions that owe them say "have");
        when they extend the stored prefix, it grows past them (the next scan starts there)."""
        if start <= self.contiguous < end and self.fork == fork:
            self.contiguous = end
        arrivals = self.arrivals
        arrivals.append((start, end))
        if len(arrivals) > _MAX_ARRIVALS:
            drop = len(arrivals) // 2
            del arrivals[:drop]
            self.arrivals_start += drop

    @property
    def arrivals_end(self) -> int:
        return self.arrivals_start + len(self.arrivals)

    def rewind(self, contiguous: int) -> None:
        """Storage rolled back what was counted as stored: forget it, make sessions rescan."""
        self.contiguous = min(self.contiguous, contiguous)
        self.releases += 1


@dataclass(slots=True)
class _Request:
    """A request in flight: an upgrade (``upgrade`` set) or a range of blocks."""

    index: int | None  # the first block of a range
    upgrade: int | None  # an upgrade from this length
    fork: int  # our fork and length when we asked: a mismatch from an unchanged state is
    length: int  # the peer's fault, from a changed state it is just a race
    end: int | None = None  # a range: blocks [index, end)
    syncs: int = -1  # an upgrade: how many syncs we had sent when we asked
    assumed: bool = False  # a range asked while the peer's length was only assumed
    follow: bool = False  # a follow (``upgrade`` is its length): answered by "tip" or "none"


class LogSession:
    """Replication of one log with one peer (sans-IO: messages in, messages out)."""

    def __init__(
        self,
        log: Log,
        claims: Claims | None = None,
        *,
        eager: bool = True,
        window: int = DEFAULT_WINDOW,
        range_size: int = DEFAULT_RANGE,
        version: int = WIRE_VERSION,
    ) -> None:
        if not 1 <= range_size <= MAX_RANGE:
            raise LocalError(f"range_size must be 1..{MAX_RANGE}")
        if version not in (3, WIRE_VERSION):
            raise LocalError(f"wire version must be 3 or {WIRE_VERSION}")
        self.log = log
        self.version = version  # 3: behave (and refuse messages) exactly as version 3 did
        self.claims = claims if claims is not None else Claims()
        self.eager = eager
        self.window = window
        self.range_size = range_size
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
        self._sent_state: tuple[int, int] | None = None  # what the peer knows of us
        self._syncs_sent = 0
        self._synced_state = (0, 0)  # the peer's state as its last sync said
        self._assumed = False  # remote_length is assumed past it (an upgrade we served)
        self._refused: set[int] = set()  # blocks this peer said it cannot serve (until sync)
        self._owed: set[int] = set()  # blocks we said "none" for: announce when stored
        self._arrivals_seen = 0  # how far ``claims.arrivals`` was looked at for owed blocks
        self.tips_received = 0
        self.tips_sent = 0
        self._peer_follows = False  # the peer sent VERSION_MARK: it understands "follow"
        self._follow: int | None = None  # the id of our follow in flight
        self._follow_refused: int | None = None  # the fork at which the peer said "none" to it
        self._held: tuple[int, int, int] | None = None  # the peer's follow: id, length, fork
        self._follow_due = False  # we sent a tip: the peer's next follow is on its way

    # -- outgoing ----------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        out = self.local_changed()
        return [VERSION_MARK, *out] if self.version >= 4 else out

    def local_changed(self) -> list[bytes]:
        """A sync if our (length, fork) changed since we last told the peer, plus "have" for
        owed blocks now stored, plus requests."""
        out: list[bytes] = []
        if self._held is not None:
            out += self._answer_held()  # a tip is also our sync (it updates ``_sent_state``)
        state = (self.log.length, self.log.fork)
        sent = self._sent_state
        if state != sent and not (self._follow_due and sent is not None and sent[1] == state[1]):
            # (while the peer's next follow is on its way, the tip answering it tells the
            # length; a new fork is told at once)
            self._sent_state = state
            self._syncs_sent += 1
            out.append(encode_sync(*state))
        if self._owed:
            out += self._announce_owed()
        out += self.pump()
        return out

    def _announce_owed(self) -> list[bytes]:
        """``have`` for owed blocks that were stored since. A few owed blocks are simply looked
        up. Many are checked against what the log's sessions recorded as arrived, plus the
        stored run at the lowest owed block (which also catches blocks stored some other way,
        in order); only when the arrival record was outrun is every owed block looked up."""
        claims, owed, has = self.claims, self._owed, self.log.has
        seen, self._arrivals_seen = self._arrivals_seen, claims.arrivals_end
        if len(owed) <= _SCAN_OWED or seen < claims.arrivals_start:
            stored = {i for i in owed if has(i)}
        else:
            stored = {
                i
                for start, end in claims.arrivals[seen - claims.arrivals_start :]
                for i in range(start, end)
                if i in owed
            }
            index = min(owed)
            while index in owed and has(index):
                stored.add(index)
                index += 1
        owed.difference_update(stored)
        return [encode_have(start, end) for start, end in ranges(sorted(stored))]

    def _owe(self, start: int, end: int) -> None:
        end = min(end, self.log.length)
        if start >= end:
            return  # past our length: our next sync tells the peer
        if not self._owed:
            self._arrivals_seen = self.claims.arrivals_end  # only later arrivals matter
        if len(self._owed) + end - start > _MAX_OWED:
            # Too much to remember: resync on the next change instead, which makes the peer
            # forget what we refused and ask again.
            self._sent_state = None
            return
        self._owed.update(range(start, end))

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
        same_fork = self.remote_fork == log.fork
        limit = provable_limit(log.length, self.remote_length) if same_fork else 0
        if self.eager:
            if self._scan_fork != log.fork:
                self._scan, self._scan_fork = 0, log.fork
            claims = self.claims
            if claims.fork != log.fork:
                claims.fork, claims.contiguous = log.fork, 0
            # The cursor only passes stored blocks, so a block whose request failed anywhere
            # (peer gone, proof mismatch) is found again on the next pump. It starts at the
            # stored prefix the log's sessions know of (no lookups for what another session
            # stored since).
            index = max(self._scan, claims.contiguous)
            while index < limit and log.has(index):
                index += 1
            self._scan = index
            claims.contiguous = index
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
        """Requests to send now (an upgrade if the peer is ahead, then ranges of wanted
        blocks)."""
        out: list[bytes] = []
        if not self.remote_synced or self.log.writable:
            return out
        log = self.log
        claimed, refused, has = self.claims.blocks, self._refused, log.has
        # While a follow is in flight (here or in another session of this log: the writer's
        # tip is coming) nobody is asked for an upgrade, which the tip would race.
        ahead = self._remote_ahead()
        following = self.claims.following
        if ahead and not self._upgrading and not self._upgrade_refused and not following:
            start = log.length if self.remote_fork == log.fork else 0
            # Following a live log (eager, same fork, past the first upgrade, which carries
            # the manifest and precedes a bulk download in ranges): the upgrade also asks for
            # the first new block, so one appended block costs one round trip, not two; not
            # if another session claimed it or this peer refused it.
            block = (
                start
                if self.eager and start > 0 and self.remote_fork == log.fork
                and start not in claimed and start not in refused and not has(start)
                else None
            )
            out.append(self._ask_upgrade(start, block))
        run_start = run_end = -1  # the range being gathered (claimed, not yet asked for)
        for index in self._wanted_blocks():
            if index in claimed or index in refused or has(index):
                continue
            if index == run_end and run_end - run_start < self.range_size:
                claimed.add(index)
                run_end += 1
                continue
            if run_start >= 0:
                out.append(self._ask_range(run_start, run_end))
                run_start = -1
            if self.inflight >= self.window:
                break
            claimed.add(index)
            run_start, run_end = index, index + 1
        if run_start >= 0:
            out.append(self._ask_range(run_start, run_end))
        if (
            not ahead
            and self._peer_follows
            and self.eager
            and self._follow is None
            and not self._upgrading
            and log.length > 0
            and self.remote_fork == log.fork
            and self._follow_refused != log.fork
        ):
            out.append(self._ask_follow())
        if not self.eager:
            self._wanted = [(s, e) for s, e in self._wanted if not self._range_done(s, e)]
        return out

    def _range_done(self, start: int, end: int) -> bool:
        return all(self.log.has(i) for i in range(start, min(end, self.log.length))) and (
            end <= self.log.length
        )

    def _ask_upgrade(self, start: int, block: int | None = None) -> bytes:
        """An upgrade from ``start``; with ``block``, that block too (claimed here)."""
        request_id = self._next_id
        self._next_id += 1
        end = None if block is None else block + 1
        self._inflight[request_id] = _Request(
            block, start, self.log.fork, self.log.length, end, self._syncs_sent
        )
        self._upgrading += 1
        if block is not None:
            self.claims.blocks.add(block)
        return encode_request(request_id, block, start)

    def _ask_follow(self) -> bytes:
        """A standing upgrade request from our length: the peer (the log's writer) holds it
        until it grows, then sends the upgrade and the new blocks in one ``tip``."""
        log = self.log
        request_id = self._next_id
        self._next_id += 1
        self._inflight[request_id] = _Request(
            None, log.length, log.fork, log.length, syncs=self._syncs_sent, follow=True
        )
        self._follow = request_id
        self.claims.following += 1
        return encode_follow(request_id, log.length, log.fork)

    def _ask_range(self, start: int, end: int) -> bytes:
        request_id = self._next_id
        self._next_id += 1
        self._inflight[request_id] = _Request(
            start, None, self.log.fork, self.log.length, end, assumed=self._assumed
        )
        return encode_range(request_id, start, end)

    def _end_follow(self) -> None:
        """Our follow was answered, or the session ends: other sessions may ask for
        upgrades again once no follow of this log is in flight."""
        self._follow = None
        self.claims.following -= 1

    def _release(self, request: _Request, start: int | None = None) -> None:
        """Give back the claims of ``request`` (from block ``start`` on, default all)."""
        if request.index is None or request.end is None:
            return
        first = request.index if start is None else start
        if first < request.end:
            self.claims.release_range(first, request.end)

    def release(self) -> None:
        """The session ends: give its claimed blocks back to the other sessions."""
        for request in self._inflight.values():
            self._release(request)
        self._inflight.clear()
        self._upgrading = 0
        if self._follow is not None:
            self._end_follow()

    # -- incoming ----------------------------------------------------------------------------

    def receive(self, data: bytes) -> tuple[list[bytes], bool]:
        """Handle one message: (messages to send, whether the other sessions of this log should
        look again: something was stored, or a claimed block was given back)."""
        msg = decode_message(data)
        kind = msg["t"]
        if self.version < 4 and kind not in V3_TYPES:
            raise InvalidPeerDataError(f"malformed replication message: {kind!r} (version 3)")
        if kind == "sync":
            self._synced(msg["length"], msg["fork"])
            self._synced_state, self._assumed = (msg["length"], msg["fork"]), False
            return self.pump(), False
        if kind == "request":
            log, upgrade = self.log, msg["upgrade"]
            # Asked for an upgrade from the state it last synced: once it stores our answer it
            # is at our length and will not sync to say so (see below); take it as synced.
            counted = (
                upgrade is not None
                and self.remote_synced
                and (self.remote_length, self.remote_fork) == (upgrade, log.fork)
            )
            answer = self._serve(msg["id"], msg["index"], upgrade)
            if not counted or answer.startswith(_NONE_HEAD):  # no upgrade sent
                return [answer], False
            self._synced(log.length, log.fork)
            self._assumed = True
            return [answer, *self.pump()], False
        if kind == "range":
            return [self._serve_range(msg["id"], msg["start"], msg["end"])], False
        if kind == "follow":
            return self._follow_asked(msg["id"], msg["length"], msg["fork"]), False
        if kind == "have":
            if msg["start"] == MAX_UINT and self.version >= 4:  # VERSION_MARK
                self._peer_follows = True
                return self.pump(), False
            self._refused.difference_update(range(msg["start"], msg["end"]))
            self._frontier = min(self._frontier, msg["start"])
            return self.pump(), False
        request = self._inflight.pop(msg["id"], None)
        if request is None:
            raise InvalidPeerDataError(f"answer to request {msg['id']}, which is not pending")
        if request.follow:
            self._end_follow()
            if kind == "none":
                # Not the writer (or we are on different forks now): no more follows to this
                # peer at this fork. Other sessions may ask for upgrades again.
                if self.remote_fork == request.fork:
                    self._follow_refused = request.fork
                return self.pump(), not self.claims.following
            if kind != "tip":
                raise InvalidPeerDataError(f"a {kind!r} does not answer a follow")
        elif kind == "tip":
            raise InvalidPeerDataError("a tip answers only a follow")
        elif request.upgrade is not None:
            self._upgrading -= 1
        if kind == "none":
            self._release(request)
            # The peer cannot serve it (a sparse peer, or it truncated): not from this peer
            # until its next sync; other sessions may still fetch it.
            if request.index is not None and request.end is not None:
                self._refused.update(range(request.index, request.end))
            if request.upgrade is not None:
                self._upgrade_refused = True  # no asking again (and again) until a new sync
            return self.pump(), request.index is not None
        try:
            if kind == "blocks":
                stored = self._apply_blocks(msg, request)
            elif kind == "tip":
                stored = self._apply_tip(msg, request)
            else:
                stored = self._apply_data(msg["proof"], request)
        except BaseException:
            self._release(request)
            raise
        if (
            kind != "blocks"
            and stored
            and request.syncs == self._syncs_sent
            and self._sent_state == (request.upgrade, request.fork)
            and self.log.fork == request.fork
        ):
            # The server counted us at the length it proved (see _serve, _tip): no sync.
            self._sent_state = (self.log.length, self.log.fork)
        return self.local_changed(), stored or kind == "blocks"

    def _synced(self, length: int, fork: int) -> None:
        self.remote_length, self.remote_fork = length, fork
        self.remote_synced = True
        self._refused.clear()
        self._upgrade_refused = False
        self._frontier = 0  # refused blocks may be back: scan again from the stored prefix

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, request_id: int, index: int | None, upgrade: int | None) -> bytes:
        log = self.log
        try:
            if upgrade is not None and upgrade > log.length:
                return encode_none(request_id)
            proof = log.proof(index, upgrade)
        except (BlockNotAvailableError, OutOfRangeError):
            if index is not None and upgrade is None:
                self._owe(index, index + 1)  # we will say "have" once it arrives
                return encode_none(request_id)
            if index is None:
                return encode_none(request_id)
            try:  # an upgrade with a block we lack: the upgrade alone still helps
                proof = log.proof(None, upgrade)
            except (BlockNotAvailableError, OutOfRangeError):
                return encode_none(request_id)
        return encode_data(request_id, encode_proof(proof))

    def _follow_asked(self, request_id: int, length: int, fork: int) -> list[bytes]:
        """The peer's follow: held until our length passes ``length`` (answered at once if it
        has already). Only the writer holds follows; anyone else, or a follow from another
        fork or from 0 (which would need the manifest), gets "none"."""
        log = self.log
        if self._held is not None:
            raise InvalidPeerDataError("a second follow while one is held")
        self._follow_due = False
        if not log.writable or length == 0 or fork != log.fork or length > log.length:
            return [encode_none(request_id)]
        self._held = (request_id, length, fork)
        return self._answer_held()

    def _answer_held(self) -> list[bytes]:
        """The held follow's answer, if our state moved past it: a tip when we grew, "none"
        when we moved to another fork (our sync, sent after it, says where)."""
        assert self._held is not None
        request_id, length, fork = self._held
        log = self.log
        if log.fork != fork or log.length < length:
            self._held = None
            return [encode_none(request_id)]
        if log.length == length:
            return []
        self._held = None
        return [self._tip(request_id, length)]

    def _tip(self, request_id: int, length: int) -> bytes:
        """The upgrade from ``length`` plus blocks ``[length, length + TIP_BLOCKS)`` (up to
        ``MAX_ANSWER_BYTES``), with their uncles up to our roots. It doubles as our sync, and
        as in :meth:`_serve` a peer asking from the state it last synced is counted at our
        length from then on."""
        log = self.log
        counted = self.remote_synced and (self.remote_length, self.remote_fork) == (
            length,
            log.fork,
        )
        end = min(log.length, length + TIP_BLOCKS)
        try:
            proof = log.range_proof(
                length, end, length, max_bytes=MAX_ANSWER_BYTES, block_overhead=_BLOCK_OVERHEAD
            )
            upgrade, values, nodes = proof.upgrade, list(proof.values), pack_uncles(proof.nodes)
        except (BlockNotAvailableError, OutOfRangeError):  # we lack a block: the upgrade alone
            upgrade, values, nodes = log.proof(None, length).upgrade, [], b""
        state = (log.length, log.fork)
        self._sent_state = state
        self._syncs_sent += 1
        if counted:
            self._synced(*state)
            self._assumed = True
        self.tips_sent += 1
        self._follow_due = True
        raw = encode_proof(Proof(fork=log.fork, upgrade=upgrade))
        return encode_tip(request_id, raw, values, nodes)

    def _serve_range(self, request_id: int, start: int, end: int) -> bytes:
        """The longest prefix of ``[start, end)`` we hold, up to ``MAX_ANSWER_BYTES``."""
        log = self.log
        values = log.get_run(start, end)  # stops at the first block we lack
        del values[blocks_within(values, MAX_ANSWER_BYTES, _BLOCK_OVERHEAD) :]
        tree = RangeTree(start, values)
        uncles: list[bytes] = []
        for index in range(start, start + len(values)):
            keep = shared_uncles(index, start)
            nodes = None if keep is None else tree.uncles(index, keep)
            if nodes is None:
                try:
                    block = log.proof(index).block
                except BlockNotAvailableError:  # a sparse replica lacking a tree node
                    break
                assert block is not None
                nodes = list(block.nodes if keep is None else block.nodes[:keep])
            uncles.append(pack_uncles(nodes))
        if not uncles:
            self._owe(start, end)
            return encode_none(request_id)
        return encode_blocks(request_id, log.fork, start, values[: len(uncles)], uncles)

    # -- applying ----------------------------------------------------------------------------

    def _apply_data(self, raw: bytes, request: _Request) -> bool:
        """The answer to an upgrade request (the only ``request`` a session makes), which
        may also carry the one block asked for with it (or not: the peer may lack it)."""
        if request.upgrade is None:
            raise InvalidPeerDataError("a single proof does not answer the range asked for")
        try:
            proof = decode_proof(raw)
        except DecodeError as exc:
            raise InvalidPeerDataError(f"undecodable proof: {exc.message}") from exc
        if proof.block is not None and proof.block.index != request.index:
            raise InvalidPeerDataError("proof carries a block that was not asked for")
        if proof.upgrade is None:
            raise InvalidPeerDataError("no upgrade in the answer to an upgrade request")
        if proof.upgrade.start != request.upgrade:
            raise InvalidPeerDataError("upgrade does not start where it was asked to")
        stored = self._store(proof, request)
        block = proof.block
        if stored and block is not None:
            self.claims.blocks.discard(block.index)
            self.claims.arrived(block.index, block.index + 1, self.log.fork)
        else:
            self._release(request)  # the block (if asked for) goes back to every session
        return stored

    def _apply_tip(self, msg: dict[str, Any], request: _Request) -> bool:
        """A follow's answer: the upgrade and the blocks after our old length, verified and
        stored as one range (``Log.apply_range``: nothing stored unless all of it verifies).
        It is also the peer's sync. From a state that moved since we asked (another session
        was faster) nothing is stored and nobody blamed; the next pump asks what is missing."""
        try:
            proof = decode_proof(msg["proof"])
        except DecodeError as exc:
            raise InvalidPeerDataError(f"undecodable proof: {exc.message}") from exc
        upgrade, values = proof.upgrade, msg["values"]
        if upgrade is None or proof.block is not None or proof.manifest is not None:
            raise InvalidPeerDataError("a tip's proof must carry an upgrade and nothing else")
        if upgrade.start != request.upgrade or proof.fork != request.fork:
            raise InvalidPeerDataError("tip does not start where the follow asked")
        start = upgrade.start
        stop = start + len(values)
        if upgrade.length <= start or stop > upgrade.length:
            raise InvalidPeerDataError("tip does not grow the log, or its blocks pass it")
        self._synced(upgrade.length, proof.fork)
        self._synced_state, self._assumed = (upgrade.length, proof.fork), False
        log = self.log
        if values:
            rp = RangeProof(
                proof.fork, start, tuple(values), upgrade.length,
                tuple(unpack_uncles(msg["nodes"])), upgrade,
            )
            apply = lambda: log.apply_range(rp)  # noqa: E731
        else:
            apply = lambda: log.apply_proof(proof)  # noqa: E731
        if not self._verified(apply, request, moved_is_race=True):
            return False
        self.upgrades_received += 1
        self.tips_received += 1
        if values:
            self.blocks_received += len(values)
            if self._scan_fork == proof.fork and start <= self._scan < stop:
                self._scan = stop
            self.claims.arrived(start, stop, proof.fork)
        return True

    def _apply_blocks(self, msg: dict[str, Any], request: _Request) -> bool:
        """Verify and store the blocks of one answer in one transaction; give back the claims
        of the part of the range it did not cover."""
        start, values, fork = msg["start"], msg["values"], msg["fork"]
        if request.end is None or request.index is None or request.upgrade is not None:
            raise InvalidPeerDataError("blocks do not answer the request that was asked for")
        stop = start + len(values)
        if start != request.index or stop > request.end:
            raise InvalidPeerDataError("blocks do not answer the range that was asked for")
        log = self.log
        if fork != log.fork or fork != request.fork:
            # Built for another fork (the peer or we moved since): store nothing, blame
            # nobody, and ask this peer again only after its next sync.
            self._release(request)
            if log.fork == request.fork:
                self._refused.update(range(request.index, request.end))
            return False
        # Every uncle sent, by flat index: block ``start + k``'s uncle at depth ``d`` is the
        # sibling of its leaf's ancestor at that depth (shared uncles overlap only where the
        # paths do, so an honest sender never sends two values for one node).
        nodes: dict[int, tuple[int, bytes]] = {}
        for index, packed in enumerate(msg["uncles"], start):
            for depth, uncle in enumerate(_UNCLE.iter_unpack(packed)):
                node = (((index >> depth) ^ 1) << (depth + 1)) | ((1 << depth) - 1)
                if nodes.setdefault(node, uncle) != uncle:
                    raise InvalidPeerDataError(f"two different uncles for tree node {node}")
        stored = 0
        apply = lambda: log.apply_blocks(fork, start, values, nodes)  # noqa: E731
        if self._verified(apply, request, moved_is_race=True):
            stored = len(values)
            self.blocks_received += stored
            if self._scan_fork == fork and start <= self._scan < stop:
                self._scan = stop  # the eager scan need not look these up one by one
        elif request.assumed and self._assumed:
            # Asked of the length we assumed the peer reached with our upgrade, which it may
            # not have stored (its state moved meanwhile; its sync is on the way): fall back
            # to what it last synced, so nothing more is asked on the assumption.
            self.remote_length, self.remote_fork = self._synced_state
            self._assumed = False
        self.claims.blocks.difference_update(range(start, start + stored))
        self._release(request, start + stored)
        if stored:
            self.claims.arrived(start, start + stored, fork)
        return stored > 0

    def _store(self, proof: Proof, request: _Request) -> bool:
        """``Log.apply_proof`` through :meth:`_verified`, counting what it stored."""
        if not self._verified(lambda: self.log.apply_proof(proof), request):
            return False
        if proof.block is not None:
            self.blocks_received += 1
        if proof.upgrade is not None:
            self.upgrades_received += 1
        return True

    def _verified(
        self, apply: Callable[[], None], request: _Request, *, moved_is_race: bool = False
    ) -> bool:
        """Run ``apply`` (a ``Log.apply_*`` call), with the peer's faults as
        InvalidPeerDataError; False when the proof no longer fits because our own state moved
        since we asked. With ``moved_is_race`` (range answers) a proof that fails to verify
        after our length moved is such a race too: its uncles reach the peer's roots, which
        may no longer cover ours (we grew past the peer's length meanwhile); asked again, the
        range stays within what this peer can prove (``provable_limit``), and an answer that
        fails from an unchanged state is the peer's fault, unless it was asked of a length we
        only assumed the peer reached (``_Request.assumed``): then nothing is stored, nobody
        blamed, and the peer is asked only within what it synced."""
        log = self.log
        try:
            apply()
        except ProofMismatchError as exc:
            if (log.fork, log.length) == (request.fork, request.length) and not request.assumed:
                raise InvalidPeerDataError(f"proof does not fit the request: {exc}") from exc
            # Our state moved since we asked (another peer was faster): not the peer's fault;
            # the next pump asks again from the new state.
            return False
        except EquivocationError as exc:
            raise InvalidPeerDataError(f"equivocation detected: {exc.message}") from exc
        except (InvalidProofError, VerificationError) as exc:
            if moved_is_race and (
                (log.fork, log.length) != (request.fork, request.length) or request.assumed
            ):
                return False
            raise InvalidPeerDataError(f"invalid proof: {exc.message}") from exc
        return True
    @property
    def inflight(self) -> int:
        """Requests in flight, not counting a follow (which may be held for ever)."""
        return len(self._inflight) - (self._follow is not None)

    @property
    def following(self) -> bool:
        """A follow of ours is in flight (held by the peer, or its answer on the way)."""
        return self._follow is not None

    @property
    def holding(self) -> bool:
        """We hold the peer's follow: our next growth is data it is waiting for."""
        return self._held is not None

    @property
    def done(self) -> bool:
        """Nothing in flight and nothing more to ask this peer for right now."""
        return not self.inflight and not self._remote_ahead()


__all__ = [
    "DEFAULT_RANGE",
    "DEFAULT_WINDOW",
    "MAX_RANGE",
    "PROTOCOL",
    "WIRE_VERSION",
    "Claims",
    "InvalidPeerDataError",
    "LogSession",
    "capability",
    "channel_key",
    "decode_message",
    "encode_blocks",
    "encode_data",
    "encode_follow",
    "encode_have",
    "encode_none",
    "encode_range",
    "encode_request",
    "encode_sync",
    "encode_tip",
]
