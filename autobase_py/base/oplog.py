"""The block format of a writer's oplog: one DAG node per block.

A block is canonical CBOR::

    {"v": 1, "heads": [[writer_key, length], ...], "batch": k, "value": bytes | null,
     "ckpt": [signature, ...] (optional)}

* ``heads`` are the DAG heads the writer had seen when appending (its own previous node is an
  implicit dependency and is never listed). Lengths are 1-based: the node at index i of a log
  is ``(key, i + 1)``. Heads are sorted and unique.
* ``batch`` counts down inside an atomic batch (3, 2, 1): the batch ends at the node with 1.
* ``value`` ``null`` marks an *ack*, a vote only: ``apply`` never sees it.
* ``ckpt`` (optional, non-empty) lists an indexer's signatures over confirmed checkpoints
  (``checkpoint.py``): the newest one, plus one per indexer-set change boundary it confirmed.

``decode_block`` refuses anything else with a DecodeError that says what was wrong; the base
reports such a writer instead of freezing silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import encoding
from ..errors import DecodeError, EncodeError
from .checkpoint import CheckpointSignature

FORMAT_VERSION = 1
KEY_BYTES = 32
MAX_HEADS = 1024
MAX_BATCH = 1 << 20
MAX_CHECKPOINTS = 64


@dataclass(frozen=True, slots=True)
class OplogBlock:
    heads: tuple[tuple[bytes, int], ...]
    batch: int = 1
    value: bytes | None = None
    checkpoints: tuple[CheckpointSignature, ...] = ()

    @property
    def is_ack(self) -> bool:
        return self.value is None


def encode_block(block: OplogBlock) -> bytes:
    obj: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "heads": [[key, length] for key, length in sorted(set(block.heads))],
        "batch": block.batch,
        "value": block.value,
    }
    if block.checkpoints:
        obj["ckpt"] = [c.to_wire() for c in block.checkpoints]
    # every field has a fixed type checked at construction (the base builds these itself),
    # so the generic type walk of ``encoding.encode`` is skipped; readers still check all
    data = encoding.encode_trusted(obj)
    if len(data) > encoding.MAX_SIZE:
        raise EncodeError(f"oplog block of {len(data)} bytes is over the {encoding.MAX_SIZE} limit")
    return data


def decode_block(data: bytes) -> OplogBlock:
    obj = encoding.expect_map(encoding.decode(data), "oplog block")
    allowed = {"v", "heads", "batch", "value", "ckpt"}
    extra = set(obj) - allowed
    if extra:
        raise DecodeError(f"oplog block: unknown fields {sorted(map(str, extra))}")
    version = encoding.field(obj, "v", int, "oplog block")
    if version != FORMAT_VERSION:
        raise DecodeError(f"oplog block: unsupported format version {version}")
    raw_heads = encoding.field(obj, "heads", list, "oplog block")
    if len(raw_heads) > MAX_HEADS:
        raise DecodeError(f"oplog block: more than {MAX_HEADS} heads")
    heads: list[tuple[bytes, int]] = []
    for head in raw_heads:
        if (
            not isinstance(head, list)
            or len(head) != 2
            or not isinstance(head[0], bytes)
            or len(head[0]) != KEY_BYTES
            or not isinstance(head[1], int)
            or isinstance(head[1], bool)
            or head[1] < 1
        ):
            raise DecodeError("oplog block: a head must be [32-byte key, length >= 1]")
        heads.append((head[0], head[1]))
    if heads != sorted(set(heads)):
        raise DecodeError("oplog block: heads must be sorted and unique")
    batch = encoding.field(obj, "batch", int, "oplog block")
    if not 1 <= batch <= MAX_BATCH:
        raise DecodeError(f"oplog block: batch {batch} out of range")
    if "value" not in obj:
        raise DecodeError("oplog block: missing field 'value'")
    value = obj["value"]
    if value is not None and not isinstance(value, bytes):
        raise DecodeError("oplog block: value must be bytes or null")
    checkpoints: tuple[CheckpointSignature, ...] = ()
    if "ckpt" in obj:
        raw = obj["ckpt"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CHECKPOINTS:
            raise DecodeError(f"oplog block: ckpt must list 1..{MAX_CHECKPOINTS} signatures")
        checkpoints = tuple(CheckpointSignature.from_wire(c) for c in raw)
    if value is None and batch != 1:
        raise DecodeError("oplog block: an ack cannot be part of a batch")
    return OplogBlock(heads=tuple(heads), batch=batch, value=value, checkpoints=checkpoints)


__all__ = ["FORMAT_VERSION", "OplogBlock", "decode_block", "encode_block"]
