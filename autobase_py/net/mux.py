"""Many named channels over one message stream (the Protomux idea), as a pure state machine.

Theory of operation
-------------------
A channel is named ``(protocol, name)``: ``("rpc", b"")``, or ``("log", discovery_key)``. Both
sides may open the same name at any time, even at the same instant; the name pairs them. Each
side picks a small integer *alias* for its half, sent in its ``OPEN``; later frames carry the
sender's alias, except ``REJECT`` which names the opener's alias (the rejecter has none).

Frames (one per transport message; integers are minimal LEB128)::

    OPEN    0x00 alias  len protocol(utf-8)  len name  handshake...
    CLOSE   0x01 alias
    REJECT  0x02 alias-of-the-opener
    MESSAGE 0x03 alias  payload...

Each name has a record ``(local, remote)`` with each half in NONE, OPEN or CLOSED. The table
below is the whole protocol; a remote input with no row is a :class:`ProtocolError` (the
connection must close), a local input with no row is a :class:`LocalError`. A record reaching
``(CLOSED, CLOSED)`` is forgotten, so the name can be opened again. Every close is answered by
a close (or a reject from a side that never opened), so both sides always forget a record, and
because the stream is ordered, frames of an old incarnation never reach a new one.
Messages may only be sent once both halves are OPEN; a message that crosses our close is
dropped. Aliases are never reused on one connection.

Keepalive pings. The protocol name ``""`` (:data:`KEEPALIVE_PROTOCOL`) is reserved: ``ping``
opens our keepalive channel (``("", b"i")`` from the connection's initiator, ``("", b"r")``
from the responder, so two crossing pings never pair), the peer rejects it and we close it:
``OPEN`` -> ``REJECT`` -> ``CLOSE``, the ordinary rows of the table, so the record is forgotten
on both sides and the next ping may follow. Each ping makes the peer send a frame, which is
what an idle timeout needs to hear. The mux answers keepalive channels itself (no event reaches
the connection, and the two ping names do not count towards ``max_channels``: other names of
the protocol are refused the same way but do count, so a peer cannot pile up records with
them); a second ping is not sent while one is unanswered. Interop: a peer from before
keepalives (wire version 3 and older) sees an OPEN of a protocol nobody registered and refuses
it through the generic path (logging the refusal at info level), which is the same ``REJECT``:
it keeps the connection and answers the ping. Such a peer does count the ping towards its
channel limit while it is open, so one already holding ``max_channels`` channels (default 256)
on the connection would drop it.

Messages take a short cut (they are nearly all the traffic): ``send`` and ``receive_frame`` on
a channel whose record is (OPEN, OPEN) do what the table's row for it says (queue the frame;
deliver) without looking the row up, and ``message_payload`` gives the connection a received
MESSAGE's channel and payload without an event object. Every other case goes through the
table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from ..errors import ChannelClosedError, LocalError, ProtocolError

MAX_PROTOCOL_BYTES: Final = 64
MAX_NAME_BYTES: Final = 64
DEFAULT_MAX_CHANNELS: Final = 256
_MAX_ALIAS: Final = 2**32 - 1
KEEPALIVE_PROTOCOL: Final = ""  # channels of this protocol are keepalive pings (see above)
_PING_NAMES: Final = (b"i", b"r")  # the pings' names (from the initiator, the responder)

OPEN, CLOSE, REJECT, MESSAGE = 0, 1, 2, 3


class Half(enum.Enum):
    NONE = "none"
    OPEN = "open"
    CLOSED = "closed"


NO, OP, CL = Half.NONE, Half.OPEN, Half.CLOSED

# (local, remote, input) -> (local', remote', actions). Actions: "send-open", "send-close",
# "send-reject", "opened", "requested", "closed", "deliver". Inputs starting with "recv-" come
# from the peer; the others from our own code.
TRANSITIONS: Final[dict[tuple[Half, Half, str], tuple[Half, Half, tuple[str, ...]]]] = {
    (NO, NO, "open"): (OP, NO, ("send-open",)),
    (NO, OP, "open"): (OP, OP, ("send-open", "opened")),
    (NO, OP, "reject"): (CL, OP, ("send-reject",)),
    (OP, NO, "close"): (CL, NO, ("send-close",)),
    (OP, OP, "close"): (CL, OP, ("send-close",)),
    (OP, OP, "send"): (OP, OP, ()),
    (NO, NO, "recv-open"): (NO, OP, ("requested",)),
    (OP, NO, "recv-open"): (OP, OP, ("opened",)),
    (CL, NO, "recv-open"): (CL, OP, ()),
    (NO, OP, "recv-close"): (CL, CL, ("send-reject", "closed")),
    (OP, OP, "recv-close"): (CL, CL, ("send-close", "closed")),
    (CL, OP, "recv-close"): (CL, CL, ()),
    (OP, NO, "recv-reject"): (CL, CL, ("send-close", "closed")),
    (CL, NO, "recv-reject"): (CL, CL, ()),
    (OP, OP, "recv-message"): (OP, OP, ("deliver",)),
    (CL, OP, "recv-message"): (CL, OP, ()),
}

Key = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class ChannelRequested:
    """The peer opened a channel we have not: answer with ``open`` or ``reject``."""

    key: Key
    handshake: bytes


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """Both halves are open; ``handshake`` is what the peer put in its OPEN."""

    key: Key
    handshake: bytes


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    key: Key
    data: bytes


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The peer closed (or rejected, or withdrew) the channel."""

    key: Key


MuxEvent = ChannelRequested | ChannelOpened | ChannelMessage | ChannelClosed


@dataclass(slots=True)
class _Record:
    key: Key
    local: Half = Half.NONE
    remote: Half = Half.NONE
    local_alias: int | None = None
    remote_alias: int | None = None
    remote_handshake: bytes = b""
    local_handshake: bytes = field(default=b"")
    message_head: bytes = b""  # MESSAGE and our alias, once we sent our OPEN


# -- frame codec ---------------------------------------------------------------------------


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(data: bytes, pos: int, limit: int) -> tuple[int, int]:
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= len(data):
            raise ProtocolError("mux frame truncated inside an integer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if value > limit:
            raise ProtocolError(f"mux integer over {limit}")
        if not byte & 0x80:
            break
        shift += 7
    if pos - start > 1 and data[pos - 1] == 0:
        raise ProtocolError("mux integer not minimally encoded")
    return value, pos


def encode_open(alias: int, key: Key, handshake: bytes) -> bytes:
    protocol = key[0].encode("utf-8")
    return (
        bytes([OPEN])
        + _uvarint(alias)
        + _uvarint(len(protocol))
        + protocol
        + _uvarint(len(key[1]))
        + key[1]
        + handshake
    )


def encode_simple(kind: int, alias: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + _uvarint(alias) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    alias: int
    key: Key | None = None
    body: bytes = b""  # handshake for OPEN, payload for MESSAGE


def decode_frame(data: bytes) -> Frame:
    """Parse one mux frame; anything malformed is a ProtocolError."""
    if not data:
        raise ProtocolError("empty mux frame")
    kind = data[0]
    if kind > MESSAGE:
        raise ProtocolError(f"unknown mux frame type {kind}")
    alias, pos = _read_uvarint(data, 1, _MAX_ALIAS)
    if kind == OPEN:
        plen, pos = _read_uvarint(data, pos, MAX_PROTOCOL_BYTES)
        if pos + plen > len(data):
            raise ProtocolError("mux open truncated in the protocol name")
        try:
            protocol = data[pos : pos + plen].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("mux protocol name is not UTF-8") from exc
        pos += plen
        nlen, pos = _read_uvarint(data, pos, MAX_NAME_BYTES)
        if pos + nlen > len(data):
            raise ProtocolError("mux open truncated in the channel name")
        name = bytes(data[pos : pos + nlen])
        return Frame(OPEN, alias, (protocol, name), bytes(data[pos + nlen :]))
    if kind == MESSAGE:
        return Frame(MESSAGE, alias, None, bytes(data[pos:]))
    if pos != len(data):
        raise ProtocolError("trailing bytes after a mux close/reject")
    return Frame(kind, alias)


# -- the mux -------------------------------------------------------------------------------


class Mux:
    """Channel bookkeeping for one connection (sans-IO).

    Local verbs (``open``, ``close``, ``reject``, ``send``) queue frames taken with
    ``frames_to_send``; ``receive_frame`` applies one frame from the peer and returns events.
    """

    def __init__(self, *, max_channels: int = DEFAULT_MAX_CHANNELS, initiator: bool = True) -> None:
        self.max_channels = max_channels
        self.keepalive_key: Key = (KEEPALIVE_PROTOCOL, _PING_NAMES[0 if initiator else 1])
        # the protocol whose channels this mux answers as pings; None behaves like a mux from
        # before keepalives (tests of interop use it)
        self.keepalive_protocol: str | None = KEEPALIVE_PROTOCOL
        self._records: dict[Key, _Record] = {}
        self._by_local: dict[int, _Record] = {}
        self._by_remote: dict[int, _Record] = {}
        self._next_alias = 0
        self._out: list[bytes] = []

    # -- inspection --------------------------------------------------------------------------

    def state(self, key: Key) -> tuple[Half, Half]:
        record = self._records.get(key)
        return (Half.NONE, Half.NONE) if record is None else (record.local, record.remote)

    def is_open(self, key: Key) -> bool:
        return self.state(key) == (Half.OPEN, Half.OPEN)

    def keys(self) -> list[Key]:
        return list(self._records)

    def frames_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    # -- local verbs -------------------------------------------------------------------------

    def open(self, key: Key, handshake: bytes = b"") -> list[MuxEvent]:
        """Open our half; returns ``[ChannelOpened]`` if the peer's half was already open."""
        protocol, name = key
        if len(protocol.encode("utf-8")) > MAX_PROTOCOL_BYTES or len(name) > MAX_NAME_BYTES:
            raise LocalError("channel protocol or name too long")
        if protocol == KEEPALIVE_PROTOCOL:
            raise LocalError("the empty protocol name is reserved for keepalives")
        record = self._records.get(key)
        if record is None:
            if len(self._records) >= self.max_channels:
                raise LocalError(f"more than {self.max_channels} channels on one connection")
            record = self._records[key] = _Record(key)
        record.local_handshake = handshake
        return self._local(record, "open")

    def close(self, key: Key) -> None:
        """Close our half (or refuse a requested channel); closing twice is a no-op."""
        record = self._records.get(key)
        if record is None or record.local is Half.CLOSED:
            return
        self._local(record, "reject" if record.local is Half.NONE else "close")

    def reject(self, key: Key) -> None:
        record = self._records.get(key)
        if record is None:
            raise LocalError(f"no channel request for {key!r}")
        self._local(record, "reject")

    def ping(self) -> bool:
        """Queue a keepalive ping, which the peer answers (see above); False, sending nothing,
        while the previous one is unanswered."""
        key = self.keepalive_key
        if key in self._records:
            return False
        self._local(self._records.setdefault(key, _Record(key)), "open")
        return True

    def send(self, key: Key, data: bytes) -> None:
        record = self._records.get(key)
        if record is not None and record.local is OP and record.remote is OP:
            self._out.append(record.message_head + data)  # the (OPEN, OPEN, "send") row
            return
        if record is None or record.local is Half.CLOSED or record.remote is Half.CLOSED:
            raise ChannelClosedError(f"channel {key!r} is closed")
        self._local(record, "send")
        assert record.local_alias is not None
        self._out.append(encode_simple(MESSAGE, record.local_alias, data))

    def _local(self, record: _Record, verb: str) -> list[MuxEvent]:
        row = TRANSITIONS.get((record.local, record.remote, verb))
        if row is None:
            raise LocalError(
                f"cannot {verb} channel {record.key!r} in state "
                f"({record.local.value}, {record.remote.value})"
            )
        return self._apply(record, row)

    # -- remote input ------------------------------------------------------------------------

    def message_payload(self, data: bytes) -> tuple[Key, bytes] | None:
        """For a MESSAGE frame with a one-byte alias on a channel that is (OPEN, OPEN): its
        key and payload, which the caller delivers (the (OPEN, OPEN, "recv-message") row: no
        state changes). None for anything else: hand it to ``receive_frame``."""
        if len(data) > 1 and data[0] == MESSAGE and data[1] < 0x80:
            record = self._by_remote.get(data[1])
            if record is not None and record.local is OP and record.remote is OP:
                return record.key, data[2:]
        return None

    def receive_frame(self, data: bytes) -> list[MuxEvent]:
        fast = self.message_payload(data)
        if fast is not None:
            return [ChannelMessage(*fast)]
        frame = decode_frame(data)
        if frame.kind == OPEN:
            assert frame.key is not None
            if frame.alias in self._by_remote:
                raise ProtocolError(f"peer reused channel alias {frame.alias}")
            ping = frame.key[0] == self.keepalive_protocol
            record = self._records.get(frame.key)
            if record is None:
                exempt = ping and frame.key[1] in _PING_NAMES  # at most two such records
                if len(self._records) >= self.max_channels and not exempt:
                    raise ProtocolError(f"peer opened more than {self.max_channels} channels")
                record = self._records[frame.key] = _Record(frame.key)
            elif record.remote is not Half.NONE:
                raise ProtocolError(f"peer opened {frame.key!r} twice")
            record.remote_alias = frame.alias
            record.remote_handshake = frame.body
            self._by_remote[frame.alias] = record
            events = self._remote(record, "recv-open", frame.body)
            if ping:  # answer it: refuse a ping, close a keepalive channel that paired
                if record.local is Half.NONE:
                    self._local(record, "reject")
                elif record.local is Half.OPEN:
                    self._local(record, "close")
                return []
            return events
        if frame.kind == REJECT:
            record = self._by_local.get(frame.alias)
            if record is None:
                raise ProtocolError(f"peer rejected unknown channel alias {frame.alias}")
            events = self._remote(record, "recv-reject", b"")
        else:
            record = self._by_remote.get(frame.alias)
            if record is None:
                raise ProtocolError(f"frame for unknown channel alias {frame.alias}")
            verb = "recv-close" if frame.kind == CLOSE else "recv-message"
            events = self._remote(record, verb, frame.body)
        return [] if record.key[0] == self.keepalive_protocol else events

    def _remote(self, record: _Record, verb: str, body: bytes) -> list[MuxEvent]:
        row = TRANSITIONS.get((record.local, record.remote, verb))
        if row is None:
            raise ProtocolError(
                f"peer sent {verb[5:]} for {record.key!r} in state "
                f"({record.local.value}, {record.remote.value})"
            )
        return self._apply(record, row, body)

    # -- the one place state changes ---------------------------------------------------------

    def _apply(
        self,
        record: _Record,
        row: tuple[Half, Half, tuple[str, ...]],
        body: bytes = b"",
    ) -> list[MuxEvent]:
        record.local, record.remote = row[0], row[1]
        events: list[MuxEvent] = []
        for action in row[2]:
            if action == "send-open":
                if self._next_alias > _MAX_ALIAS:
                    raise LocalError("channel aliases exhausted on this connection")
                alias = record.local_alias = self._next_alias
                self._next_alias += 1
                self._by_local[alias] = record
                record.message_head = encode_simple(MESSAGE, alias)
                self._out.append(encode_open(alias, record.key, record.local_handshake))
            elif action == "send-close":
                assert record.local_alias is not None
                self._out.append(encode_simple(CLOSE, record.local_alias))
            elif action == "send-reject":
                assert record.remote_alias is not None
                self._out.append(encode_simple(REJECT, record.remote_alias))
            elif action == "opened":
                events.append(ChannelOpened(record.key, record.remote_handshake))
            elif action == "requested":
                events.append(ChannelRequested(record.key, record.remote_handshake))
            elif action == "closed":
                events.append(ChannelClosed(record.key))
            elif action == "deliver":
                events.append(ChannelMessage(record.key, body))
        if record.local is Half.CLOSED and record.remote is Half.CLOSED:
            del self._records[record.key]
            if record.local_alias is not None:
                del self._by_local[record.local_alias]
            if record.remote_alias is not None:
                del self._by_remote[record.remote_alias]
        return events


__all__ = [
    "DEFAULT_MAX_CHANNELS",
    "KEEPALIVE_PROTOCOL",
    "TRANSITIONS",
    "ChannelClosed",
    "ChannelMessage",
    "ChannelOpened",
    "ChannelRequested",
    "Frame",
    "Half",
    "Key",
    "Mux",
    "MuxEvent",
    "decode_frame",
]
