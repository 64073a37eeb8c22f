"""A small key-value app on a Bee view, for the base's tests and benchmarks.

Values are CBOR ops: ``["put", key, value]``, ``["del", key]``, ``["add", writer, indexer]``,
``["remove", writer]``, ``["ack", writer]``, ``["interrupt", reason]``, ``["raise", message]``
and ``["note", anything]``. Besides applying the op, ``apply`` appends every value it sees to
an order journal (``b"~order/" + u64``) so a view's tree hash pins down exactly which values
were applied in which order: two views with equal tree hashes applied the same order.
"""

from __future__ import annotations

import struct
from typing import Any

from .. import encoding
from ..base.core import Autobase
from ..base.host import ApplyHost, ApplyNode
from ..bee import Bee
from ..errors import DecodeError
from ..log import Log
from ..store import Store
from .cluster import Cluster
from .sync import converge

_COUNT = b"~count"
_ORDER = b"~order/"
_DATA = b"d/"
_U64 = struct.Struct(">Q")


class KVError(Exception):
    """Raised on purpose by the ``raise`` op (to test apply failures)."""


def open_view(log: Log) -> Bee:
    return Bee(log)


async def open_base(store: Store, bootstrap: bytes | None = None) -> Autobase[Bee]:
    """A base of this app on ``store`` (the bootstrap writer's when ``bootstrap`` is None)."""
    base: Autobase[Bee] = await Autobase.open(store, bootstrap, apply=apply, open_view=open_view)
    return base


async def indexers(cluster: Cluster[Autobase[Bee]], n: int) -> list[Autobase[Bee]]:
    """``n`` bases of ``cluster`` named a, b, c, ..., all indexers (a, the bootstrap, adds the
    others), converged."""
    a = await cluster.open("a")
    others = [await cluster.open(chr(ord("a") + i), a.key) for i in range(1, n)]
    if others:
        await a.append([add_writer(b.local_key) for b in others])
    bases = [a, *others]
    await converge(bases)
    for b in bases:
        assert b.is_indexer and len(b.indexers) == n
    return bases


def put(key: bytes, value: bytes) -> bytes:
    return encoding.encode(["put", key, value])


def delete(key: bytes) -> bytes:
    return encoding.encode(["del", key])


def add_writer(key: bytes, *, indexer: bool = True) -> bytes:
    return encoding.encode(["add", key, indexer])


def remove_writer(key: bytes) -> bytes:
    return encoding.encode(["remove", key])


def ack_writer(key: bytes) -> bytes:
    return encoding.encode(["ack", key])


def interrupt(reason: str) -> bytes:
    return encoding.encode(["interrupt", reason])


def fail(message: str) -> bytes:
    return encoding.encode(["raise", message])


def note(text: str) -> bytes:
    return encoding.encode(["note", text])


async def apply(nodes: list[ApplyNode], view: Bee, host: ApplyHost) -> None:
    batch = view.batch()
    raw = await batch.get(_COUNT)
    count = 0 if raw is None else _U64.unpack(raw)[0]
    for node in nodes:
        batch.put(_ORDER + _U64.pack(count), node.value)
        count += 1
        try:
            op: Any = encoding.decode(node.value)
        except DecodeError:
            continue  # not an op: journaled only
        if not isinstance(op, list) or not op:
            continue
        kind = op[0]
        if kind == "put" and len(op) == 3:
            batch.put(_DATA + op[1], op[2])
        elif kind == "del" and len(op) == 2:
            batch.delete(_DATA + op[1])
        elif kind == "add" and len(op) == 3:
            host.add_writer(op[1], indexer=bool(op[2]))
        elif kind == "remove" and len(op) == 2:
            host.remove_writer(op[1])
        elif kind == "ack" and len(op) == 2:
            host.ack_writer(op[1])
        elif kind == "interrupt":
            host.interrupt(str(op[1]) if len(op) > 1 else "interrupted")
        elif kind == "raise":
            raise KVError(str(op[1]) if len(op) > 1 else "raise op")
    batch.put(_COUNT, _U64.pack(count))
    await batch.flush()


async def get(view: Bee, key: bytes) -> bytes | None:
    return await view.get(_DATA + key)


async def journal(view: Bee) -> list[bytes]:
    """Every value applied to ``view``, in order."""
    return [v async for _, v in view.range(gte=_ORDER, lt=_ORDER + b"\xff")]


__all__ = [
    "KVError",
    "ack_writer",
    "add_writer",
    "apply",
    "delete",
    "fail",
    "get",
    "indexers",
    "interrupt",
    "journal",
    "note",
    "open_base",
    "open_view",
    "put",
    "remove_writer",
]
