"""Many logs under one storage folder: named writable logs and replicas opened by key.

A store keeps a 32-byte *primary seed* in its storage (record ``store/primary-seed``, written
once, in the same database as everything else, so a folder is self-contained). The key pair of
the writable log called ``name`` is ``key_pair(H("autobase_py/store/v1" || seed || name))``:
the same folder always gives the same keys, and names never need to be stored anywhere else.
A log opened by key is a replica unless the folder holds a named log with that key, in which
case it is that writable log. Repeated ``get`` calls for one log return the same object, so
there is one in-memory header per log.

Backups are not made by copying folders (DESIGN.md section 1): the seed lets a copied folder
sign as the original, which would fork every log it writes.
"""

from __future__ import annotations

import os

from . import crypto
from .errors import InvalidKeyError, LocalError, StorageClosedError
from .log import Log, Manifest
from .storage import Storage

PRIMARY_SEED_RECORD = b"store/primary-seed"
_DERIVATION = b"autobase_py/store/v1"


class Store:
    """Logs in one storage folder. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, storage: Storage, primary_seed: bytes) -> None:
        self.storage = storage
        self._primary_seed = primary_seed
        self._logs: dict[bytes, Log] = {}

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        primary_seed: bytes | None = None,
        fsync: bool = True,
    ) -> Store:
        """Open the folder at ``path`` (creating it). ``primary_seed`` (32 bytes) fixes the
        seed of a new folder (for tests and deterministic setups); a folder that already has a
        different seed refuses it. ``fsync=False``: see ``Storage.open``."""
        if primary_seed is not None and len(primary_seed) != crypto.SEED_BYTES:
            raise InvalidKeyError(f"primary seed must be {crypto.SEED_BYTES} bytes")
        storage = Storage.open(path, fsync=fsync)
        try:
            stored = storage.get(PRIMARY_SEED_RECORD)
            if stored is None:
                stored = primary_seed if primary_seed is not None else crypto.random_bytes(32)
                with storage.transaction():
                    storage.require_sync(force=True)  # the folder's identity: never lose it
                    storage.put(PRIMARY_SEED_RECORD, stored)
            elif primary_seed is not None and primary_seed != stored:
                raise LocalError(f"storage folder {path} already has another primary seed")
        except BaseException:
            storage.close()
            raise
        return cls(storage, stored)

    def key_pair(self, name: str) -> crypto.KeyPair:
        """The key pair of the writable log called ``name`` in this folder."""
        if not isinstance(name, str) or not name:
            raise LocalError("a log name must be a non-empty string")
        seed = crypto.hash(_DERIVATION, self._primary_seed, name.encode("utf-8"))
        return crypto.key_pair(seed)

    def get(
        self,
        *,
        name: str | None = None,
        key: bytes | None = None,
        key_pair: crypto.KeyPair | None = None,
    ) -> Log:
        """The log called ``name`` (writable), the log ``key`` (a replica unless it is one of
        this folder's named logs), or the writable log signed by ``key_pair``."""
        if sum(x is not None for x in (name, key, key_pair)) != 1:
            raise LocalError("Store.get takes exactly one of name=, key=, key_pair=")
        if self.storage.closed:
            raise StorageClosedError(f"store {self.storage.path} is closed")
        if name is not None:
            pair = self.key_pair(name)
            log_key = Manifest.single(pair.public_key).key()
            return self._logs.get(log_key) or self._remember(Log.create(self.storage, pair, name))
        if key_pair is not None:
            log_key = Manifest.single(key_pair.public_key).key()
            found = self._logs.get(log_key)
            if found is None:
                return self._remember(Log.create(self.storage, key_pair))
            if not found.writable:  # opened earlier as a replica: give it its key pair
                Log.create(self.storage, key_pair)  # stores the manifest if it was unknown
                found.key_pair = key_pair
                found.reload()
            return found
        assert key is not None
        if not isinstance(key, bytes) or len(key) != crypto.PUBLIC_KEY_BYTES:
            raise InvalidKeyError("a log key must be 32 bytes")
        found = self._logs.get(key)
        if found is not None:
            return found
        row = self.storage.find_log(key=key)
        if row is not None and row.name is not None:
            return self.get(name=row.name)
        return self._remember(Log.replica(self.storage, key))

    def _remember(self, log: Log) -> Log:
        self._logs[log.key] = log
        return log

    def log_keys(self) -> list[bytes]:
        """The keys of every log stored in this folder."""
        return [key for key, _ in self.storage.log_keys()]

    def close(self) -> None:
        """Close the storage (releasing the folder's lock). Logs from this store stop working."""
        self._logs.clear()
        self.storage.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["PRIMARY_SEED_RECORD", "Store"]
