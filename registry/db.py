"""The registry database: the ``entries`` collection and its indexes on a bee.

Theory of operation
===================

Key layout. Every bee key is a tuple (``autobase_py.bee.encode_tuple``, order-preserving)
whose first element is the collection or index id declared in ``registry/spec/registry.json``:

=================================  ==========================================================
``(1, name)``                      the entry record (``schema.encode_record``, latest version)
``(2, drive_key, name)``           index ``entries-by-drive-key``, value ``b""``
``(3, type, name)``                index ``entries-by-type``, value ``b""``
``(4, owner, name)``               index ``entries-by-owner`` (schema v2), value ``b""``
``(4, 0, name)``                   the same index for an entry *without* owner
``(0, "schema")``                  meta: the schema version the stored data is complete for
=================================  ==========================================================

Because the name is the last element, a lookup is one range over the prefix
``(index id, value)``: exact (``"t"`` never matches ``"t1"``: the string terminator is part of
the prefix), sorted by name, and O(log n + results) with one primary ``get`` per result. An
entry without owner is indexed under the integer ``0``, a different element kind from every
owner string, so ``entries_of_owner(None)`` is an exact lookup too, never a scan.

Writes. A :class:`Transaction` wraps ONE bee batch: reads inside it see its own writes, and
``flush`` appends everything with one log append (the service's ``apply`` opens one
transaction per apply call). ``put`` reads the stored record first: an identical entry writes
nothing; a changed ``drive_key``/``type``/``owner`` deletes the old index key and writes the new
one. ``delete`` removes the record and its index keys; a missing name is a no-op.

Schema upgrade (v1 -> v2). Version 1 had no ``owner`` and no ``entries-by-owner`` index, so a
view written by v1 code has no ``(4, 0, name)`` keys. Every write says which schema version
its writer ran (``version=``; the service passes the op envelope's ``v``; plain database use
means this code's newest). The view's version (the meta key; absent on a non-empty view means
1, data from before the meta key) only moves forward: a write whose writer version is newer
*migrates* first, in the same batch: it adds ``(4, 0, name)`` for every stored entry (v1
records never carry an owner) and records the new version. Writes then use the layout of the
view's version: a v1 op applied by v2 code on a v1 view writes exactly what v1 code writes,
and the entry must fit the writer's version (a ``ValidationError`` on ``owner`` for a v1
writer). Records are not rewritten: ``decode_record`` reads v1 records under v2 (owner
``None``). In the service the migration therefore happens at the first op written by v2 code,
a fixed position of the order, whenever each peer installed the new code: views stay
byte-identical across peers and equal to a fresh replay (tested), and a v1 node meeting that op
halts (the router reports ``NewerSchema``) instead of diverging. If the base undoes past the
migration, the view is truncated back and the replay migrates again at the same op. A no-op
write (identical put, delete of a missing name) writes nothing, migration included.

Reads never write. A reader on a view still at version 1 answers ``entries_of_owner(None)`` by
scanning the primary collection (the only O(n) path, and only until a v2 write) and
``entries_of_owner("x")`` with ``[]`` (v1 entries have no owner).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Protocol

from autobase_py import encoding, ids
from autobase_py.bee import Batch, Bee, RangeIterator, Snapshot, decode_tuple, encode_tuple
from autobase_py.bee import prefix_range as _prefix_range
from autobase_py.bee.keys import encode_element
from autobase_py.errors import DecodeError, InvalidKeyError, NotWritableError

from .entry import FIELDS, Entry, validate_name
from .errors import SchemaError, ValidationError
from .schema import RecordEncoder, Spec, decode_record, encode_record, load_spec, spec_at

_RECORD = "entry"
_META_ID = 0
_SCHEMA_KEY = encode_tuple((_META_ID, "schema"))
NO_OWNER = 0  # the index element standing for "no owner" (an int: never equal to a string)


class _Source(Protocol):
    async def get(self, key: bytes) -> bytes | None: ...

    def range(
        self,
        *,
        gt: bytes | None = None,
        gte: bytes | None = None,
        lt: bytes | None = None,
        lte: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> RangeIterator: ...


class Layout:
    """The key layout derived from the spec's collection and index ids (see module doc)."""

    def __init__(self, spec: Spec) -> None:
        latest = spec.latest
        self.spec = spec
        self.version = latest.version
        try:
            self.entries = latest.collections["entries"].id
            self.by_drive_key = latest.indexes["entries-by-drive-key"].id
            self.by_type = latest.indexes["entries-by-type"].id
        except KeyError as exc:
            raise SchemaError(f"the registry needs collection/index {exc.args[0]!r}") from exc
        # absent under a version-1 spec (how a v1 node ran: no owner, no owner index)
        owner_index = latest.indexes.get("entries-by-owner")
        self.by_owner: int | None = None if owner_index is None else owner_index.id
        ids = [c.id for c in latest.collections.values()] + [x.id for x in latest.indexes.values()]
        if _META_ID in ids:
            raise SchemaError(f"id {_META_ID} is reserved for the registry's meta keys")
        known = set(latest.records[_RECORD].field_names) if _RECORD in latest.records else set()
        self._missing = tuple(f for f in FIELDS if f not in known)  # Entry fields v lacks
        # the schema version that introduced the owner index (older data needs the migration)
        self.owner_since = next(
            (v.version for v in spec.versions if "entries-by-owner" in v.indexes), 0
        )

        # Key prefixes encoded once: a put builds four keys that share them (and the name).
        self._entries_prefix = encode_element(self.entries)
        self._drive_key_prefix = encode_element(self.by_drive_key)
        self._type_prefix = encode_element(self.by_type)
        self._owner_prefix = None if self.by_owner is None else encode_element(self.by_owner)
        self._no_owner = encode_element(NO_OWNER)
        self._record_encoder = (
            RecordEncoder(latest, _RECORD) if _RECORD in latest.records else None
        )

    def primary(self, name: str) -> bytes:
        """``encode_tuple((entries, name))``."""
        return self._entries_prefix + encode_element(name)

    def index_keys(self, entry: Entry) -> list[bytes]:
        """The index keys of ``entry``: ``encode_tuple((index id, value, name))`` each."""
        name = encode_element(entry.name)
        keys = [
            self._drive_key_prefix + encode_element(entry.drive_key) + name,
            self._type_prefix + encode_element(entry.type) + name,
        ]
        if self._owner_prefix is not None:
            owner = self._no_owner if entry.owner is None else encode_element(entry.owner)
            keys.append(self._owner_prefix + owner + name)
        return keys

    def check(self, entry: Entry) -> None:
        """ValidationError naming a set field that this schema version does not have."""
        for name in self._missing:
            if getattr(entry, name) is not None:
                raise ValidationError(name, f"not a field in schema version {self.version}")

    def encode(self, entry: Entry) -> bytes:
        """The record bytes under this layout's schema version (refuses unknown fields)."""
        self.check(entry)
        return encode_record(self.spec.latest, _RECORD, entry.to_dict())

    def encode_parsed(self, entry: Entry) -> bytes:
        """:meth:`encode` for an entry from ``Entry.parse`` (its values are known to be
        plain text and bytes, so the encoder's type walk and key sorting are skipped; same
        bytes)."""
        encoder = self._record_encoder
        if encoder is None:
            return self.encode(entry)
        self.check(entry)
        return encoder.encode(entry.to_dict())

    def decode(self, data: bytes) -> Entry:
        fields = decode_record(self.spec, _RECORD, data)
        try:
            return Entry(**fields)
        except TypeError as exc:  # the spec and Entry disagree on the field set
            raise DecodeError(f"entry record does not fit Entry: {exc}") from exc


def _scan(
    source: _Source, prefix: tuple[int | bytes | str, ...], limit: int | None = None
) -> RangeIterator:
    """Every key starting with the tuple ``prefix`` (exact elements), in key order."""
    bounds = _prefix_range(prefix)
    return source.range(gte=bounds["gte"], lt=bounds["lt"], limit=limit)


def _name_of(key: bytes) -> str:
    parts = decode_tuple(key)
    name = parts[-1] if parts else None
    if not isinstance(name, str):
        raise DecodeError("index key does not end with an entry name")
    return name


def _as_entry(entry: Entry | Mapping[str, Any]) -> Entry:
    return Entry.parse(entry)


class _Reader:
    """Lookups over any bee-like source (a bee, a snapshot, or a batch)."""

    def __init__(self, source: _Source, layout: Layout) -> None:
        self._source = source
        self._layout = layout

    async def get(self, name: str) -> Entry | None:
        """The entry called ``name``, or None."""
        raw = await self._source.get(self._layout.primary(validate_name(name)))
        return None if raw is None else self._layout.decode(raw)

    async def get_by_drive_key(self, key: bytes | str) -> Entry | None:
        """The first entry (by name) whose drive key is ``key`` (bytes, hex or z-base-32)."""
        try:
            drive_key = ids.normalize(key)
        except InvalidKeyError as exc:
            raise ValidationError("drive_key", exc.message) from exc
        async for k, _ in _scan(self._source, (self._layout.by_drive_key, drive_key), 1):
            return await self._must_get(_name_of(k))
        return None

    def entries_of_type(self, type: str) -> AsyncIterator[Entry]:  # noqa: A002 (domain name)
        """Entries whose type is exactly ``type``, sorted by name."""
        return self._by_index((self._layout.by_type, type))

    def entries_of_owner(self, owner: str | None) -> AsyncIterator[Entry]:
        """Entries whose owner is exactly ``owner`` (None: entries without owner), by name."""
        element: int | str = NO_OWNER if owner is None else owner
        return self._owner_lookup(element)

    async def _owner_lookup(self, element: int | str) -> AsyncIterator[Entry]:
        by_owner = self._layout.by_owner
        if by_owner is None:
            raise SchemaError(f"schema version {self._layout.version} has no owner index")
        if await self.schema_version() < self._layout.owner_since:
            # unmigrated older data: the owner index does not exist yet (see module doc)
            if element == NO_OWNER:
                async for entry in self.entries():
                    if entry.owner is None:
                        yield entry
            return
        async for entry in self._by_index((by_owner, element)):
            yield entry

    async def _by_index(self, prefix: tuple[int | bytes | str, ...]) -> AsyncIterator[Entry]:
        async for k, _ in _scan(self._source, prefix):
            yield await self._must_get(_name_of(k))

    async def entries(self) -> AsyncIterator[Entry]:
        """Every entry, sorted by name."""
        async for _, v in _scan(self._source, (self._layout.entries,)):
            yield self._layout.decode(v)

    async def schema_version(self) -> int:
        """The schema version the stored data is complete for (0: empty, never written)."""
        raw = await self._source.get(_SCHEMA_KEY)
        if raw is not None:
            version = encoding.decode(raw)
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise DecodeError("registry meta: bad schema version")
            return version
        async for _ in _scan(self._source, (self._layout.entries,), 1):
            return 1  # entries written before the meta key existed: version 1 data
        return 0

    async def _must_get(self, name: str) -> Entry:
        entry = await self.get(name)
        if entry is None:
            raise DecodeError(f"index points at entry {name!r} which is not stored")
        return entry


class Transaction(_Reader):
    """Writes to the registry through ONE bee batch (reads see its own writes).

    Use as ``async with registry.transaction() as tx:``; the batch is flushed once on a clean
    exit and discarded when the block raises.
    """

    def __init__(self, batch: Batch, layout: Layout) -> None:
        super().__init__(batch, layout)
        self._batch = batch
        self._stored: int | None = None  # the view's schema version, once read
        self._layouts: dict[int, Layout] = {layout.version: layout}

    def _layout_at(self, version: int) -> Layout:
        found = self._layouts.get(version)
        if found is None:
            found = self._layouts[version] = Layout(spec_at(self._layout.spec, version))
        return found

    async def _target(self, version: int | None) -> tuple[int, Layout, Layout]:
        """(stored version, layout the write uses, layout of the writer's version).

        A write by code of schema version ``version`` brings the view to at least that
        version; the view never goes back. ``None`` means this code's newest version."""
        if self._stored is None:
            self._stored = await self.schema_version()
        writer = self._layout.version if version is None else version
        if not 1 <= writer <= self._layout.version:
            raise SchemaError(f"cannot write as schema version {writer}")
        target = max(self._stored, writer)
        return self._stored, self._layout_at(target), self._layout_at(writer)

    async def _upgrade(self, stored: int, target: int) -> None:
        """Record ``target`` as the view's version, migrating older data (see module doc)."""
        if target <= stored and stored != 0:
            return
        by_owner = self._layout.by_owner
        if by_owner is not None and 0 < stored < self._layout.owner_since <= target:
            await self._migrate_owner_index(by_owner)
        self._batch.put(_SCHEMA_KEY, encoding.encode(target))
        self._stored = target

    async def _migrate_owner_index(self, by_owner: int) -> None:
        no_owner = []
        async for entry in self.entries():
            if entry.owner is None:
                no_owner.append(encode_tuple((by_owner, NO_OWNER, entry.name)))
        for key in no_owner:
            self._batch.put(key, b"")

    async def put(self, entry: Entry | Mapping[str, Any], *, version: int | None = None) -> bool:
        """Insert or update; returns False when the identical entry was already stored.

        ``version``: the schema version of the code that wrote the op (default: this code's
        newest). The entry must fit that version (ValidationError naming the field)."""
        return await self.put_valid(_as_entry(entry), version=version)

    async def put_valid(self, new: Entry, *, version: int | None = None) -> bool:
        """:meth:`put` for an entry that already went through ``Entry.parse`` (the op codec
        parses every ``put-entry`` request), saving a second validation in apply. Only such
        entries: the record is encoded without the encoder's type walk."""
        stored, layout, writer = await self._target(version)
        if writer is not layout:
            writer.check(new)  # refuses fields the writer's schema lacks, before any write
        record = layout.encode_parsed(new)
        primary = layout.primary(new.name)
        raw = await self._source.get(primary)
        old = None if raw is None else self._layout.decode(raw)
        if old == new:
            return False
        await self._upgrade(stored, layout.version)
        new_keys = layout.index_keys(new)
        if old is None:
            put_keys = new_keys
        else:
            # an upsert moves only the index keys whose value changed
            old_keys = layout.index_keys(old)
            for key in old_keys:
                if key not in new_keys:
                    self._batch.delete(key)
            put_keys = [key for key in new_keys if key not in old_keys]
        self._batch.put(primary, record)
        for key in put_keys:
            self._batch.put(key, b"")
        return True

    async def delete(self, name: str, *, version: int | None = None) -> bool:
        """Remove the entry and its index keys; returns False when there was none."""
        name = validate_name(name)
        old = await self.get(name)
        if old is None:
            return False
        stored, layout, _ = await self._target(version)
        await self._upgrade(stored, layout.version)
        self._batch.delete(layout.primary(name))
        for key in layout.index_keys(old):
            self._batch.delete(key)
        return True

    async def flush(self) -> int:
        """Append the changes with one log append; returns the bee version."""
        return await self._batch.flush()

    def discard(self) -> None:
        self._batch.discard()

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.flush()
        else:
            self.discard()


class Registry(_Reader):
    """The model registry over a bee (read-write) or a bee snapshot (read-only)."""

    def __init__(self, bee: Bee | Snapshot, spec: Spec | None = None) -> None:
        self.layout = Layout(spec if spec is not None else load_spec())
        super().__init__(bee, self.layout)
        self.bee = bee

    def transaction(self) -> Transaction:
        """A write transaction over one new bee batch (flushed once by ``async with``)."""
        if not isinstance(self.bee, Bee):
            raise NotWritableError("this registry reads a snapshot; it cannot be written")
        return Transaction(self.bee.batch(), self.layout)

    def at(self, version: int) -> Registry:
        """A read-only registry pinned at bee ``version`` (a flush boundary)."""
        if isinstance(self.bee, Bee):
            return Registry(self.bee.snapshot(version), self.layout.spec)
        raise NotWritableError("snapshot registries cannot be re-pinned")

    @property
    def version(self) -> int:
        """The bee version (view length) this registry reads."""
        return self.bee.version

    async def put(self, entry: Entry | Mapping[str, Any]) -> bool:
        """Insert or update one entry (validated first); False when nothing changed."""
        new = _as_entry(entry)
        async with self.transaction() as tx:
            return await tx.put_valid(new)

    async def delete(self, name: str) -> bool:
        """Remove the entry ``name``; a missing name is a no-op (returns False)."""
        async with self.transaction() as tx:
            return await tx.delete(name)


__all__ = ["NO_OWNER", "Layout", "Registry", "Transaction"]
