"""An encrypted connection as a pure state machine: handshake, then secretstream messages.

Theory of operation
-------------------
Bytes from the network go into ``receive_data``; events come out (``Established``,
``Message``, ``PeerClosed``); bytes for the network accumulate and are taken with
``data_to_send``. Nothing here reads a clock: the handshake deadline is fixed from the ``now``
given at construction and checked by ``handle_timer(now)``.

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

States (rules: each row lists what may arrive; anything else is a protocol error)::

    HANDSHAKE  -- noise messages in turn -----------> AWAIT_HEADER
    AWAIT_HEADER -- 24-byte header -----------------> OPEN
    OPEN       -- ciphertext (MESSAGE) --------------> OPEN
    OPEN       -- ciphertext (FINAL) ----------------> REMOTE_CLOSED
    any        -- violation -------------------------> FAILED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .. import crypto
from ..errors import LocalError, ProtocolError, TimedOutError
from .framing import FrameDecoder, encode_frame
from .noise import Handshake, HandshakeResult
from .secretstream import ABYTES, Decryptor, Encryptor

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE = 8 * 1024 * 1024
_HANDSHAKE_FRAME_LIMIT = 256  # the largest handshake message is 192 bytes


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
    def deadline(self) -> float | None:
        """When ``handle_timer`` must next be called (only during the handshake)."""
        return self.handshake_deadline if self.state is State.HANDSHAKE else None

    # -- the three verbs ---------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Feed bytes from the network (``b""`` = EOF); returns the events they complete."""
        if self.state is State.FAILED:
            raise ProtocolError("connection already failed")
        try:
            if not data:
                return self._eof()
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
        self._out.clear()
        return out

    def handle_timer(self, now: float) -> None:
        if self.state is State.HANDSHAKE and now >= self.handshake_deadline:
            self.state = State.FAILED
            raise TimedOutError("handshake timed out")

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
    "DEFAULT_MAX_MESSAGE",
    "Established",
    "Event",
    "Message",
    "PeerClosed",
    "SecureConnection",
    "State",
]
