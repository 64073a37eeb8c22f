"""An encrypted connection as a pure state machine: handshake, then secretstream messages.

Theory of operation
-------------------
Bytes from the network go into ``receive_data``; events come out (``Established``,
``Message``, ``PeerClosed``); bytes for the network accumulate and are taken with
``data_to_send``. Nothing here reads a clock: the handshake deadline is fixed from the ``now``
given at construction, and both it and the liveness checks below run in ``handle_timer(now)``,
which the adapter calls at ``deadline``.

Wire, every unit being a length-prefixed frame (``framing``)::

    initiator                         responder
    noise message 1  --------------->
                     <---------------  noise message 2
    noise message 3  --------------->
    secretstream header (24 bytes) ->  (responder now holds both keys)
                     <---------------  secretstream header
    ciphertexts      <-------------->  ciphertexts ... FINAL

The initiator may send data right after its header, so application data costs no extra
round trip. A ``FINAL`` message ends each direction on purpose; an EOF without it is reported
as ``PeerClosed(clean=False)``. Every violation (bad frame, failed handshake, failed MAC, data
after FINAL) raises :class:`ProtocolError`/:class:`HandshakeError`, after which the object
refuses everything: the adapter closes the socket.

Liveness (dead-peer detection). A peer can vanish without a FIN or RST (a pulled cable, a
frozen VM, a NAT that dropped the mapping); TCP alone notices that after hours, if ever. Once
the handshake is done, with ``idle_timeout`` set, a connection on which *nothing at all* was
received for ``idle_timeout`` seconds fails with :class:`TimedOutError` ("peer silent for
20 s"): the adapter closes it like any other failure (logged, channels closed). With
``keepalive_interval`` set, ``handle_timer`` returns True when *we* sent nothing for that long:
the adapter then sends a keepalive (a mux ping, see ``mux``), which the peer answers, so an
idle but healthy pair always hears from each other. The two settings travel together as one
``Liveness`` value, checked when it is made: off (``LIVENESS_OFF``) by default here, 5 s and
20 s (``DEFAULT_LIVENESS``) by default in the trio adapter.

The hot path pays one integer increment per ``receive_data`` and per non-empty
``data_to_send``, no clock reads: ``handle_timer`` runs every ``tick`` (a quarter of the idle
timeout or half the keepalive interval, whichever is smaller: 2.5 s by default), compares the
counters with the last tick's and dates a change to the tick that saw it. So silence is
detected between ``idle_timeout`` and ``idle_timeout + tick`` after the last byte, and a
keepalive goes out between ``keepalive_interval`` and ``keepalive_interval + tick`` after the
last write. A tick that runs more than a tick late (our own process was busy or frozen, not
the peer) moves the last-heard time on by the lateness: the peer is not blamed for time in
which we could not have read it. Liveness stops once either side ended its direction (the
graceful close has its own ``close_timeout``) and after a failure.

States (rules: each row lists what may arrive; anything else is a protocol error)::

    HANDSHAKE  -- noise messages in turn -----------> AWAIT_HEADER
    AWAIT_HEADER -- 24-byte header -----------------> OPEN
    OPEN       -- ciphertext (MESSAGE) --------------> OPEN
    OPEN       -- ciphertext (FINAL) ----------------> REMOTE_CLOSED
    any        -- violation -------------------------> FAILED
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .. import crypto
from ..errors import LocalError, ProtocolError, TimedOutError
from .framing import FrameDecoder, encode_frame
from .noise import Handshake, HandshakeResult
from .secretstream import ABYTES, Decryptor, Encryptor

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE = 8 * 1024 * 1024
DEFAULT_KEEPALIVE_INTERVAL = 5.0  # used by the trio adapter; the core's default is off
DEFAULT_IDLE_TIMEOUT = 20.0
_HANDSHAKE_FRAME_LIMIT = 256  # the largest handshake message is 192 bytes


@dataclass(frozen=True, slots=True)
class Liveness:
    """Dead-peer detection settings of a connection (see above). ``keepalive_interval``: a
    ping goes out once we sent nothing for that long; ``idle_timeout``: the connection fails
    once nothing at all arrived for that long. None turns either off. Both must be positive,
    and the timeout at least twice the interval (the peer answers our keepalives: two
    intervals leave room for one to be late); anything else is a LocalError here, before any
    connection is made."""

    keepalive_interval: float | None = DEFAULT_KEEPALIVE_INTERVAL
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        interval, idle = self.keepalive_interval, self.idle_timeout
        for name, value in (("keepalive_interval", interval), ("idle_timeout", idle)):
            if value is not None and not value > 0:
                raise LocalError(f"{name} must be positive or None, not {value!r}")
        if interval is not None and idle is not None and idle < 2 * interval:
            raise LocalError(
                f"idle_timeout ({idle:g} s) must be at least twice "
                f"keepalive_interval ({interval:g} s)"
            )

    @property
    def tick(self) -> float | None:
        """How often the checks run: half the interval or a quarter of the timeout, whichever
        is smaller; None when both are off."""
        ticks = []
        if self.keepalive_interval is not None:
            ticks.append(self.keepalive_interval / 2)
        if self.idle_timeout is not None:
            ticks.append(self.idle_timeout / 4)
        return min(ticks) if ticks else None


LIVENESS_OFF = Liveness(None, None)  # the core's default: no pings, no idle timeout
DEFAULT_LIVENESS = Liveness()  # the trio adapter's default: 5 s and 20 s


class State(enum.Enum):
    HANDSHAKE = "handshake"
    AWAIT_HEADER = "await-header"
    OPEN = "open"
    REMOTE_CLOSED = "remote-closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Established:
    """The handshake finished and the peer proved its ed25519 key."""

    remote_public_key: bytes
    handshake_hash: bytes


@dataclass(frozen=True, slots=True)
class Message:
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer ended its direction: ``clean`` when it sent FINAL, False on a bare EOF."""

    clean: bool


Event = Established | Message | PeerClosed


class SecureConnection:
    """One side of an encrypted connection (sans-IO)."""

    def __init__(
        self,
        key_pair: crypto.KeyPair,
        *,
        initiator: bool,
        now: float,
        expected_remote_key: bytes | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        liveness: Liveness = LIVENESS_OFF,
    ) -> None:
        self.initiator = initiator
        self.max_message = max_message
        self._handshake = Handshake(
            key_pair, initiator=initiator, expected_remote_key=expected_remote_key
        )
        self._frames = FrameDecoder(max(max_message + ABYTES, _HANDSHAKE_FRAME_LIMIT))
        self._out = bytearray()
        self._encryptor: Encryptor | None = None
        self._decryptor: Decryptor | None = None
        self.state = State.HANDSHAKE
        self.result: HandshakeResult | None = None
        self.handshake_deadline = now + handshake_timeout
        self.local_closed = False
        # liveness: counters bumped on the hot path, compared once per tick (see above)
        self.keepalive_interval = liveness.keepalive_interval
        self.idle_timeout = liveness.idle_timeout
        self.tick = liveness.tick
        self.received_count = 0  # receive_data calls with bytes
        self.sent_count = 0  # data_to_send calls that returned bytes
        self._next_tick: float | None = None  # None until the first tick after the handshake
        self._received_seen = 0
        self._sent_seen = 0
        self._heard_at = 0.0
        self._sent_at = 0.0
        if initiator:
            self._out += encode_frame(self._handshake.write())

    # -- facts -------------------------------------------------------------------------------

    @property
    def remote_public_key(self) -> bytes:
        if self.result is None:
            raise LocalError("handshake not complete")
        return self.result.remote_public_key

    @property
    def handshake_hash(self) -> bytes:
        if self.result is None:
            raise LocalError("handshake not complete")
        return self.result.handshake_hash

    @property
    def can_send(self) -> bool:
        return self._encryptor is not None and not self.local_closed and self.state != State.FAILED

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for the network and not yet taken by ``data_to_send``."""
        return len(self._out)

    @property
    def watching(self) -> bool:
        """Liveness checks are on and apply now (handshake done, neither side closed)."""
        return (
            self.tick is not None
            and (self.state is State.OPEN or self.state is State.AWAIT_HEADER)
            and not self.local_closed
        )

    @property
    def deadline(self) -> float | None:
        """When ``handle_timer`` must next be called: the handshake deadline, then, with
        liveness on, the next tick (``-inf`` before the first: call it at once, so the
        liveness clock starts); None when nothing is due."""
        if self.state is State.HANDSHAKE:
            return self.handshake_deadline
        if not self.watching:
            return None
        return -math.inf if self._next_tick is None else self._next_tick

    # -- the three verbs ---------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Feed bytes from the network (``b""`` = EOF); returns the events they complete."""
        if self.state is State.FAILED:
            raise ProtocolError("connection already failed")
        try:
            if not data:
                return self._eof()
            self.received_count += 1
            events: list[Event] = []
            for frame in self._frames.feed(data):
                self._frame(frame, events)
            return events
        except ProtocolError:
            self.state = State.FAILED
            raise

    def send(self, message: bytes) -> None:
        """Queue one message (encrypted and framed)."""
        if self._encryptor is None:
            raise LocalError("cannot send before the handshake completes")
        if self.local_closed:
            raise LocalError("connection closed locally")
        if len(message) > self.max_message:
            raise LocalError(f"message of {len(message)} bytes is over {self.max_message}")
        self._out += encode_frame(self._encryptor.encrypt(message))

    def close(self) -> None:
        """End our direction on purpose (FINAL); idempotent; before the handshake it is a no-op."""
        if self.local_closed:
            return
        self.local_closed = True
        if self._encryptor is not None:
            self._out += encode_frame(self._encryptor.final())

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        if out:
            self._out.clear()
            self.sent_count += 1
        return out

    def handle_timer(self, now: float) -> bool:
        """Check the deadlines at ``now``: TimedOutError for a handshake past its deadline or
        a peer silent for ``idle_timeout``; True when a keepalive should be sent now."""
        if self.state is State.HANDSHAKE:
            if now >= self.handshake_deadline:
                self.state = State.FAILED
                raise TimedOutError("handshake timed out")
            return False
        tick = self.tick
        if tick is None or not self.watching:
            return False
        next_tick = self._next_tick
        self._next_tick = now + tick
        if next_tick is None:  # the first tick: the liveness clock starts now
            self._received_seen, self._sent_seen = self.received_count, self.sent_count
            self._heard_at = self._sent_at = now
            return False
        late = now - next_tick
        if late > tick:  # we were away, not (necessarily) the peer
            self._heard_at += late
        if self.received_count != self._received_seen:
            self._received_seen = self.received_count
            self._heard_at = now
        elif self.idle_timeout is not None and now - self._heard_at >= self.idle_timeout:
            self.state = State.FAILED
            raise TimedOutError(f"peer silent for {self.idle_timeout:g} s")
        if self.sent_count != self._sent_seen:
            self._sent_seen = self.sent_count
            self._sent_at = now
        elif self.keepalive_interval is not None and now - self._sent_at >= self.keepalive_interval:
            self._sent_at = now
            return self.can_send
        return False

    # -- internals ---------------------------------------------------------------------------

    def _eof(self) -> list[Event]:
        if self.state is State.REMOTE_CLOSED:
            return []
        if self._frames.buffered:
            raise ProtocolError("connection ended inside a frame")
        if self.state is not State.OPEN:
            raise ProtocolError(f"connection ended during {self.state.value}")
        self.state = State.REMOTE_CLOSED
        return [PeerClosed(clean=False)]

    def _frame(self, frame: bytes, events: list[Event]) -> None:
        state = self.state
        if state is State.OPEN:
            assert self._decryptor is not None
            message, final = self._decryptor.decrypt(frame)
            if final:
                self.state = State.REMOTE_CLOSED
                events.append(PeerClosed(clean=True))
            elif len(message) > self.max_message:
                raise ProtocolError(f"message of {len(message)} bytes is over the limit")
            else:
                events.append(Message(message))
        elif state is State.HANDSHAKE:
            hs = self._handshake
            hs.read(frame)
            if hs.wants_to_write:
                self._out += encode_frame(hs.write())
            if hs.complete:
                assert hs.result is not None
                self.result = hs.result
                self._encryptor = Encryptor(hs.result.send_key)
                self._out += encode_frame(self._encryptor.header)
                if self.local_closed:
                    self._out += encode_frame(self._encryptor.final())
                self.state = State.AWAIT_HEADER
                events.append(Established(hs.result.remote_public_key, hs.result.handshake_hash))
        elif state is State.AWAIT_HEADER:
            assert self.result is not None
            self._decryptor = Decryptor(self.result.receive_key, frame)
            self.state = State.OPEN
        else:
            raise ProtocolError(f"data after the peer closed ({state.value})")


__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_LIVENESS",
    "DEFAULT_MAX_MESSAGE",
    "LIVENESS_OFF",
    "Established",
    "Event",
    "Liveness",
    "Message",
    "PeerClosed",
    "SecureConnection",
    "State",
]
