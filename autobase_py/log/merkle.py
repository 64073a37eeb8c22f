"""Hypercore's Merkle rules, byte for byte: node hashes, tree hash, signable, manifest.

* Leaf:   ``H(0x00 || u64le(len(block)) || block)``
* Parent: ``H(0x01 || u64le(left.size + right.size) || left.hash || right.hash)``
* Tree hash of a length: ``H(0x02 || for each root: root.hash || u64le(root.index) ||
  u64le(root.size))``, roots in flat-tree order (largest first).
* Signable (112 bytes): ``TREE || log key || tree hash || u64le(length) || u64le(fork)``; the
  signer signs those bytes directly with ed25519.
* Manifest (version 1), compact-encoding: ``uint version, uint flags, uint hash type (0 =
  BLAKE2b), uint quorum, uint signer count, then per signer: uint signature type (0 = ed25519),
  32-byte namespace, 32-byte public key``. The log key is ``H(MANIFEST || encoded manifest)``.

``H`` is BLAKE2b-256; ``TREE`` and ``MANIFEST`` come from ``namespace("hypercore", 6)``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import NamedTuple

from .. import crypto
from ..errors import DecodeError, InvalidKeyError

(
    TREE,
    REPLICATE_INITIATOR,
    REPLICATE_RESPONDER,
    MANIFEST,
    DEFAULT_NAMESPACE,
    DEFAULT_ENCRYPTION,
) = crypto.namespace("hypercore", 6)

HASH_BLAKE2B = 0
SIGNATURE_ED25519 = 0
MANIFEST_VERSION = 1
MAX_SIGNERS = 16

_LEAF = b"\x00"
_PARENT = b"\x01"
_ROOT = b"\x02"
_blake2b = hashlib.blake2b
_U64_PAIR = struct.Struct("<QQ").pack


class Node(NamedTuple):
    """A tree node: flat index, byte size of the blocks under it, 32-byte hash."""

    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose
    size: int
    hash: bytes


def leaf_hash(block: bytes) -> bytes:
    return _blake2b(_LEAF + len(block).to_bytes(8, "little") + block, digest_size=32).digest()


def parent_hash(left: Node, right: Node) -> bytes:
    size = (left.size + right.size).to_bytes(8, "little")
    return _blake2b(_PARENT + size + left.hash + right.hash, digest_size=32).digest()


def parent_node(index: int, left: Node, right: Node) -> Node:
    return Node(index, left.size + right.size, parent_hash(left, right))


def tree_hash(roots: list[Node] | tuple[Node, ...]) -> bytes:
    h = _blake2b(_ROOT, digest_size=32)
    update = h.update
    for root in roots:
        update(root.hash + _U64_PAIR(root.index, root.size))  # hash, u64le index, u64le size
    return h.digest()


def signable(key: bytes, tree: bytes, length: int, fork: int) -> bytes:
    """The 112 bytes a signer signs for (tree hash, length, fork) of the log ``key``."""
    return TREE + key + tree + length.to_bytes(8, "little") + fork.to_bytes(8, "little")


# --- compact-encoding uints -----------------------------------------------------------------


def encode_uint(n: int) -> bytes:
    """Compact-encoding varint: < 0xfd in one byte, else a marker and a u16/u32/u64 (LE)."""
    if n < 0 or n >= 1 << 64:
        raise ValueError("uint out of range")
    if n < 0xFD:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfd" + n.to_bytes(2, "little")
    if n < 1 << 32:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def decode_uint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); DecodeError on truncation or a non-shortest form."""
    if pos >= len(data):
        raise DecodeError("truncated uint")
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    end = pos + 1 + width
    if end > len(data):
        raise DecodeError("truncated uint")
    value = int.from_bytes(data[pos + 1 : end], "little")
    if encode_uint(value) != data[pos:end]:
        raise DecodeError("uint not in its shortest form")
    return value, end


# --- manifest -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signer:
    namespace: bytes
    public_key: bytes
    signature: int = SIGNATURE_ED25519


@dataclass(frozen=True, slots=True)
class Manifest:
    """Who may sign a log. Only version 1, BLAKE2b, ed25519, quorum 1, one signer is verified."""

    signers: tuple[Signer, ...]
    quorum: int = 1
    version: int = MANIFEST_VERSION
    flags: int = 0
    hash: int = HASH_BLAKE2B

    @classmethod
    def single(cls, public_key: bytes, namespace: bytes = DEFAULT_NAMESPACE) -> Manifest:
        """The default manifest of a one-writer log (what Hypercore makes for a key pair)."""
        if len(public_key) != crypto.PUBLIC_KEY_BYTES:
            raise InvalidKeyError(f"public key must be 32 bytes, got {len(public_key)}")
        return cls(signers=(Signer(namespace, public_key),))

    @property
    def public_key(self) -> bytes:
        """The single signer's public key (the only shape the log verifies)."""
        return self.signers[0].public_key

    def encode(self) -> bytes:
        out = bytearray()
        for value in (self.version, self.flags, self.hash, self.quorum, len(self.signers)):
            out += encode_uint(value)
        for signer in self.signers:
            out += encode_uint(signer.signature)
            out += signer.namespace
            out += signer.public_key
        return bytes(out)

    def key(self) -> bytes:
        """The log key: ``H(MANIFEST || encoded manifest)``."""
        return crypto.hash(MANIFEST, self.encode())

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """The manifest in ``data``; DecodeError for garbage or a shape the log cannot verify."""
        if not isinstance(data, bytes):
            raise DecodeError("manifest must be bytes")
        version, pos = decode_uint(data, 0)
        if version != MANIFEST_VERSION:
            raise DecodeError(f"manifest version {version} is not supported")
        flags, pos = decode_uint(data, pos)
        hash_type, pos = decode_uint(data, pos)
        quorum, pos = decode_uint(data, pos)
        count, pos = decode_uint(data, pos)
        if flags != 0 or hash_type != HASH_BLAKE2B:
            raise DecodeError("manifest flags or hash type not supported")
        if count != 1 or quorum != 1:
            raise DecodeError("only single-signer manifests with quorum 1 are supported")
        signers = []
        for _ in range(count):
            kind, pos = decode_uint(data, pos)
            if kind != SIGNATURE_ED25519:
                raise DecodeError(f"signature type {kind} is not supported")
            if pos + 64 > len(data):
                raise DecodeError("truncated manifest signer")
            signers.append(Signer(data[pos : pos + 32], data[pos + 32 : pos + 64], kind))
            pos += 64
        if pos != len(data):
            raise DecodeError("trailing bytes after manifest")
        return cls(signers=tuple(signers), quorum=quorum, version=version)


__all__ = [
    "DEFAULT_ENCRYPTION",
    "DEFAULT_NAMESPACE",
    "MANIFEST",
    "REPLICATE_INITIATOR",
    "REPLICATE_RESPONDER",
    "TREE",
    "Manifest",
    "Node",
    "Signer",
    "decode_uint",
    "encode_uint",
    "leaf_hash",
    "parent_hash",
    "parent_node",
    "signable",
    "tree_hash",
]
