"""libsodium ``crypto_secretstream_xchacha20poly1305``: one push state and one pull state.

After the handshake each side owns a send key and a receive key (Noise ``split``). The sender
creates a push state, whose 24-byte header is the first thing it sends; the receiver creates
the pull state from that header. Every message is then ``17 + len(plaintext)`` bytes (1 tag
byte + 16 MAC bytes, libsodium's layout) and carries a tag: ``MESSAGE`` for data and ``FINAL``
for a graceful end of stream, so a truncated stream is distinguishable from a closed one.
Reordering, replay, truncation or a flipped bit fail the MAC: :class:`ProtocolError`.

Per message, libsodium's push/pull are called through pynacl's cffi library directly (into a
reused output buffer) rather than through ``nacl.bindings``, whose argument checks and fresh
buffers cost about twice the cipher itself on the small messages replication sends (a live
replica gets a few dozen bytes per message). The bytes are libsodium's either way; states are
still set up through ``nacl.bindings``.
"""

from __future__ import annotations

from typing import Any, Final

from nacl import bindings as _sodium
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from ..errors import LocalError, ProtocolError

HEADER_BYTES: Final = _sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
KEY_BYTES: Final = _sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES  # 32
ABYTES: Final = _sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
TAG_MESSAGE: Final = _sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL: Final = _sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL

_push = _lib.crypto_secretstream_xchacha20poly1305_push
_pull = _lib.crypto_secretstream_xchacha20poly1305_pull
_buffer = _ffi.buffer
_NULL = _ffi.NULL
_INITIAL_BUFFER: Final = 4096


def _grow(buf: Any, size: int) -> Any:
    """``buf`` if it holds ``size`` bytes, else a new buffer that does (doubling)."""
    if len(buf) >= size:
        return buf
    return _ffi.new("unsigned char[]", max(size, 2 * len(buf)))


class Encryptor:
    """The sending half: ``header`` first, then ``encrypt`` per message, ``final`` once."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise LocalError(f"secretstream key must be {KEY_BYTES} bytes")
        self._state = _sodium.crypto_secretstream_xchacha20poly1305_state()
        init_push = _sodium.crypto_secretstream_xchacha20poly1305_init_push
        self.header = bytes(init_push(self._state, key))
        self._raw = self._state.statebuf
        self._out = _ffi.new("unsigned char[]", _INITIAL_BUFFER)
        self.finished = False

    def encrypt(self, message: bytes) -> bytes:
        if self.finished:
            raise LocalError("secretstream already finished")
        return self._push(message, TAG_MESSAGE)

    def final(self) -> bytes:
        """The last message (empty, tagged FINAL): tells the peer we closed on purpose."""
        if self.finished:
            raise LocalError("secretstream already finished")
        self.finished = True
        return self._push(b"", TAG_FINAL)

    def _push(self, message: bytes, tag: int) -> bytes:
        size = len(message) + ABYTES
        out = self._out = _grow(self._out, size)
        if _push(self._raw, out, _NULL, message, len(message), _NULL, 0, tag) != 0:
            raise LocalError("secretstream encryption failed")  # pragma: no cover - libsodium
        return _buffer(out, size)[:]  # type: ignore[no-any-return]


class Decryptor:
    """The receiving half; ``decrypt`` returns ``(message, final)``."""

    def __init__(self, key: bytes, header: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise LocalError(f"secretstream key must be {KEY_BYTES} bytes")
        if len(header) != HEADER_BYTES:
            raise ProtocolError(f"secretstream header must be {HEADER_BYTES} bytes")
        self._state = _sodium.crypto_secretstream_xchacha20poly1305_state()
        try:
            _sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)
        except Exception as exc:
            raise ProtocolError("invalid secretstream header") from exc
        self._raw = self._state.statebuf
        self._out = _ffi.new("unsigned char[]", _INITIAL_BUFFER)
        self._tag = _ffi.new("unsigned char *")
        self.finished = False

    def decrypt(self, ciphertext: bytes) -> tuple[bytes, bool]:
        if self.finished:
            raise ProtocolError("data after the end of the secretstream")
        if len(ciphertext) < ABYTES:
            raise ProtocolError("secretstream message too short")
        size = len(ciphertext) - ABYTES
        out = self._out = _grow(self._out, size)
        tag_out = self._tag
        if _pull(self._raw, out, _NULL, tag_out, ciphertext, len(ciphertext), _NULL, 0) != 0:
            raise ProtocolError("secretstream message failed authentication")
        tag = tag_out[0]
        if tag == TAG_MESSAGE:
            return _buffer(out, size)[:], False
        if tag == TAG_FINAL:
            if size:
                raise ProtocolError("final secretstream message carries data")
            self.finished = True
            return b"", True
        raise ProtocolError(f"unexpected secretstream tag {tag}")


__all__ = ["ABYTES", "HEADER_BYTES", "KEY_BYTES", "Decryptor", "Encryptor"]
