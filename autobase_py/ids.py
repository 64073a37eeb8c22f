"""Keys as text: z-base-32 when printed (as Holepunch tools print them), hex or z-base-32 read.

Keys are ``bytes`` everywhere inside the library; this module is for the edges (CLI, RPC,
logs). ``decode`` accepts exactly a 64-character hex string or a 52-character z-base-32 string
(surrounding whitespace is ignored) and names the problem of anything else.
"""

from __future__ import annotations

from .errors import InvalidKeyError

KEY_BYTES = 32
_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
_HEX = frozenset("0123456789abcdefABCDEF")
Z32_KEY_CHARS = 52  # ceil(256 / 5)
HEX_KEY_CHARS = 64


def z32_encode(data: bytes) -> str:
    """z-base-32 text of ``data`` (no padding; trailing bits zero)."""
    bits = int.from_bytes(data, "big") if data else 0
    nbits = len(data) * 8
    nchars = (nbits + 4) // 5
    bits <<= nchars * 5 - nbits
    return "".join(_ALPHABET[(bits >> (5 * (nchars - 1 - i))) & 31] for i in range(nchars))


def z32_decode(text: str, nbytes: int) -> bytes:
    """Bytes of z-base-32 ``text`` expected to hold exactly ``nbytes`` bytes."""
    nchars = (nbytes * 8 + 4) // 5
    if len(text) != nchars:
        raise InvalidKeyError(f"z-base-32 text must be {nchars} characters, got {len(text)}")
    value = 0
    for pos, char in enumerate(text):
        digit = _VALUE.get(char)
        if digit is None:
            raise InvalidKeyError(f"invalid z-base-32 character {char!r} at position {pos}")
        value = (value << 5) | digit
    spare = nchars * 5 - nbytes * 8
    if value & ((1 << spare) - 1):
        raise InvalidKeyError("z-base-32 text has non-zero padding bits (not a canonical key)")
    return (value >> spare).to_bytes(nbytes, "big")


def encode(key: bytes) -> str:
    """The printable form of a 32-byte key (z-base-32, 52 characters)."""
    if not isinstance(key, (bytes, bytearray)):
        raise InvalidKeyError(f"key must be bytes, got {type(key).__name__}")
    if len(key) != KEY_BYTES:
        raise InvalidKeyError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
    return z32_encode(bytes(key))


def decode(text: str) -> bytes:
    """A 32-byte key from 64 hex characters or 52 z-base-32 characters."""
    if not isinstance(text, str):
        raise InvalidKeyError(f"key text must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise InvalidKeyError("key is empty")
    if len(stripped) == HEX_KEY_CHARS:
        bad = next((c for c in stripped if c not in _HEX), None)
        if bad is not None:
            raise InvalidKeyError(f"64-character key is not hex: invalid character {bad!r}")
        return bytes.fromhex(stripped)
    if len(stripped) == Z32_KEY_CHARS:
        return z32_decode(stripped, KEY_BYTES)
    raise InvalidKeyError(
        f"key must be 64 hex or 52 z-base-32 characters, got {len(stripped)} characters"
    )


def normalize(key: bytes | bytearray | str) -> bytes:
    """Accept a key as bytes, hex or z-base-32 (every user-facing path does) and return bytes."""
    if isinstance(key, str):
        return decode(key)
    if isinstance(key, (bytes, bytearray)):
        if len(key) != KEY_BYTES:
            raise InvalidKeyError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
        return bytes(key)
    raise InvalidKeyError(f"key must be bytes or text, got {type(key).__name__}")


__all__ = ["KEY_BYTES", "decode", "encode", "normalize", "z32_decode", "z32_encode"]
