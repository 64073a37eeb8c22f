"""libsodium ``crypto_secretstream_xchacha20poly1305``: one push state and one pull state.

After the handshake each side owns a send key and a receive key (Noise ``split``). The sender
creates a push state, whose 24-byte header is the first thing it sends; the receiver creates
the pull state from that header. Every message is then ``17 + len(plaintext)`` bytes (1 tag
byte + 16 MAC bytes, libsodium's layout) and carries a tag: ``MESSAGE`` for data and ``FINAL``
for a graceful end of stream, so a truncated stream is distinguishable from a closed one.
Reordering, replay, truncation or a flipped bit fail the MAC: :class:`ProtocolError`.
"""

from __future__ import annotations

from typing import Final

from nacl import bindings as _sodium

from ..errors import LocalError, ProtocolError

HEADER_BYTES: Final = _sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
KEY_BYTES: Final = _sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES  # 32
ABYTES: Final = _sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
TAG_MESSAGE: Final = _sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL: Final = _sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL

_push = _sodium.crypto_secretstream_xchacha20poly1305_push
_pull = _sodium.crypto_secretstream_xchacha20poly1305_pull


class Encryptor:
    """The sending half: ``header`` first, then ``encrypt`` per message, ``final`` once."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise LocalError(f"secretstream key must be {KEY_BYTES} bytes")
        self._state = _sodium.crypto_secretstream_xchacha20poly1305_state()
        init_push = _sodium.crypto_secretstream_xchacha20poly1305_init_push
        self.header = bytes(init_push(self._state, key))
        self.finished = False

    def encrypt(self, message: bytes) -> bytes:
        if self.finished:
            raise LocalError("secretstream already finished")
        return bytes(_push(self._state, message, None, TAG_MESSAGE))

    def final(self) -> bytes:
        """The last message (empty, tagged FINAL): tells the peer we closed on purpose."""
        if self.finished:
            raise LocalError("secretstream already finished")
        self.finished = True
        return bytes(_push(self._state, b"", None, TAG_FINAL))


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
        self.finished = False

    def decrypt(self, ciphertext: bytes) -> tuple[bytes, bool]:
        if self.finished:
            raise ProtocolError("data after the end of the secretstream")
        if len(ciphertext) < ABYTES:
            raise ProtocolError("secretstream message too short")
        try:
            message, tag = _pull(self._state, ciphertext, None)
        except Exception as exc:
            raise ProtocolError("secretstream message failed authentication") from exc
        if tag == TAG_FINAL:
            if message:
                raise ProtocolError("final secretstream message carries data")
            self.finished = True
            return b"", True
        if tag != TAG_MESSAGE:
            raise ProtocolError(f"unexpected secretstream tag {tag}")
        return bytes(message), False


__all__ = ["ABYTES", "HEADER_BYTES", "KEY_BYTES", "Decryptor", "Encryptor"]
