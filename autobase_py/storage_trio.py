"""The trio side of storage: a fair write lock per storage.

A :class:`~autobase_py.storage.Storage` has one SQLite connection and one transaction at a
time. Tasks of one process that share it must not write into each other's transactions, and
some hold theirs across awaits (a base's apply cycle awaits the user's ``apply``). Such writers
take turns through ``write_lock(storage)``: a ``trio.Lock`` per storage, which is FIFO fair, so
a task that asks while a cycle runs gets the next turn instead of racing the cycle's owner for
the moment between two cycles (without turns, a replication session could starve behind a
writer appending back to back until its channel overflowed).
"""

from __future__ import annotations

import weakref

import trio

from .storage import Storage

_LOCKS: weakref.WeakKeyDictionary[Storage, trio.Lock] = weakref.WeakKeyDictionary()


def write_lock(storage: Storage) -> trio.Lock:
    """The fair lock whose holder may keep a transaction of ``storage`` open across awaits."""
    lock = _LOCKS.get(storage)
    if lock is None:
        lock = _LOCKS[storage] = trio.Lock()
    return lock


__all__ = ["write_lock"]
