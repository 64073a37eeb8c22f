"""Length-prefixed frames: ``u24 little-endian length || body``, parsed incrementally.

The same framing carries the three handshake messages, the secretstream header and every
secretstream ciphertext. ``FrameDecoder.feed`` accepts any split of the byte stream (one byte
at a time included) and returns the complete frames; a length over the limit is a
:class:`ProtocolError` before any of the body is buffered, so a peer cannot make us hold more
than ``max_frame`` bytes.
"""

from __future__ import annotations

from typing import Final

from ..errors import LocalError, ProtocolError

HEADER_BYTES: Final = 3
MAX_FRAME: Final = 2**24 - 1


def encode_frame(body: bytes) -> bytes:
    """``body`` with its 3-byte length prefix."""
    n = len(body)
    if n > MAX_FRAME:
        raise LocalError(f"frame of {n} bytes is over the {MAX_FRAME}-byte limit")
    return n.to_bytes(HEADER_BYTES, "little") + body


class FrameDecoder:
    """Turns a byte stream into frames; keeps at most one partial frame buffered."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if not 0 < max_frame <= MAX_FRAME:
            raise LocalError(f"max_frame must be in 1..{MAX_FRAME}")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being read, once known

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        buf = self._buffer
        pos = 0
        while True:
            if self._need is None:
                if len(buf) - pos < HEADER_BYTES:
                    break
                need = int.from_bytes(buf[pos : pos + HEADER_BYTES], "little")
                if need > self.max_frame:
                    raise ProtocolError(
                        f"frame of {need} bytes is over the {self.max_frame}-byte limit"
                    )
                pos += HEADER_BYTES
                self._need = need
            if len(buf) - pos < self._need:
                break
            frames.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = None
        if pos:
            del buf[:pos]
        return frames


__all__ = ["HEADER_BYTES", "MAX_FRAME", "FrameDecoder", "encode_frame"]
