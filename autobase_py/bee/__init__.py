"""The view store: an ordered bytes -> bytes map kept as a copy-on-write B+ tree in a log.

``Bee(log)`` reads and writes a tree whose root is the log's last block (``core.py``); the
tree algorithms are synchronous and pure (``tree.py``), nodes have a versioned block format
(``node.py``), composite index keys have an order-preserving tuple encoding (``keys.py``), and
sparse replicas fetch verified blocks through a pluggable source (``source.py``). See
``docs/bee.md`` for formats and guarantees.
"""

from .core import (
    Batch,
    Bee,
    InvalidEntryError,
    NotAVersionError,
    RangeIterator,
    Snapshot,
    SnapshotExpiredError,
)
from .keys import decode_tuple, encode_tuple, prefix_range
from .node import FORMAT_VERSION
from .source import BeeLog, BlockSource

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "Bee",
    "BeeLog",
    "BlockSource",
    "InvalidEntryError",
    "NotAVersionError",
    "RangeIterator",
    "Snapshot",
    "SnapshotExpiredError",
    "decode_tuple",
    "encode_tuple",
    "prefix_range",
]
