"""The node's storage engine: one SQLite database per storage folder.

Theory of operation
-------------------
A storage folder holds ``LOCK`` and ``db.sqlite`` (plus SQLite's ``-wal`` file). Opening takes
``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``LOCK``; a second opener (another process, or a second
``Storage.open`` in this one) gets :class:`StorageLockedError` naming the holder's pid. The
database runs in WAL mode with ``locking_mode=EXCLUSIVE`` (no shared-memory index; nobody else
may touch the file anyway).

Transactions. Every write happens inside :meth:`Storage.transaction`, a re-entrant context
manager: the outermost level runs ``BEGIN IMMEDIATE`` ... ``COMMIT``, inner levels are SQLite
savepoints, so an exception caught between levels undoes only the inner level's writes. Logs
and other in-memory caches *enlist* in the running transaction; whenever a level rolls back,
every enlisted participant reloads its in-memory state from the database (which now holds the
rolled-back state), so memory never runs ahead of disk. A write outside any transaction (a
bare ``log.append``) opens its own, so it commits alone. A *flat* transaction
(``transaction(flat=True)``, the base's apply cycle) skips the savepoints of its inner levels:
it is all or nothing, and an inner failure that somebody caught still rolls the whole of it
back at the end instead of committing a half-done write.

fsync policy. Every commit is atomic (WAL); a commit is made *durable* against power loss
when something in it asked for that with :meth:`Storage.require_sync`: the outermost COMMIT then
fsyncs the WAL before returning (exactly what ``synchronous=FULL`` does, but only when needed).
Appends to a writable log ask for it by default, because a signed block that reached a peer and
was then lost locally would make this writer sign a different block at the same length
(equivocation). Data that can be fetched or recomputed (replicated blocks, a local view log that
is a deterministic function of the oplogs, bookkeeping records) commits without its own fsync
(``synchronous=NORMAL``): after a power loss the database is still consistent, at most the
last such transactions are gone, and the next durable commit covers them too. ``kill -9`` loses
nothing committed either way (the OS keeps the written WAL). WAL checkpoints run automatically
every 8192 pages (32 MiB; SQLite's default of 1000 made their two fsyncs a visible share of a
busy base's time) and fsync the main file. Group commit is the caller's lever: many appends (of
many logs) and records inside one ``transaction()`` cost at most one fsync. That is how the base
commits an apply cycle, and how the throughput figures in ``bench/log_bench.py`` are reached.
``Storage.open(path, fsync=False)`` ignores ``require_sync`` (except forced ones: a store's
primary seed): every commit is then only as durable as RocksDB's default ``sync=false``
writes, which is what the JS stack runs with; a power loss may drop the last commits, and a
writer whose signed blocks already reached a peer would then fork its log.

Layout. ``logs`` holds one row per log (key, name, manifest, fork, frozen, and the signature
of its empty tree); each log's tree lives in a table of its own, ``log_<id>``: one row per
stored node, keyed by its *position* (the order in which appends create nodes: each block's
leaf, then the parents it completes; :func:`autobase_py.log.flat_tree.post_order`), with
size, hash, for a leaf whose block is stored the block itself in ``data``, and in the row of
the last root of the log's length its signature. Callers pass positions, not flat indices.
So an append's block and new parents are one run of rows at the right end of its log's own
B-tree: the rows go to the last page, and a full last page grows by one new page (SQLite's
cheap right-end split) instead of being rebalanced with its neighbours, as the tail of a log in
the middle of a shared table was. A commit's cost is about proportional to the pages it
dirtied (WAL frames), so an append writes nothing else (and a header can never disagree with
the rows, crash or not): its length is the one whose last root
is the table's last row (appends create ``2 n - popcount(n)`` nodes for ``n`` blocks:
:func:`length_at` inverts it), its byte length the sum of that length's roots, its signature
the one in that row (each signed append's last row keeps the signature it was made with; only
the last row's counts). The ``logs`` row changes only with the fork (a truncation, a replica
following a new fork), the frozen flag, and the signature of an empty log. A truncation is one
range delete, and a subtree is one range. Every stored block has its leaf node (the log stores
a block only with, or after, verifying or computing that leaf). :meth:`Storage.tree_rows`
lists the rows of one log or of all for inspection (no view spans the per-log tables: a view
would be rebuilt, a schema change that re-prepares every statement, on each new log). Schema
versions 1 to 3 (one shared node table, blocks in a table of their own or not, nodes by flat
index or by position) and 4 (the header in ``logs``, inspection views) are migrated by
``open``. ``records`` is a small ordered key-value table (bytes -> bytes) for other modules'
state (linearizer, system state); modules prefix their keys with their own name
(``b"base/..."``). A Storage object is used by one thread at a time (callers may move calls
to a worker thread with ``trio.to_thread.run_sync``, never two at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import StorageClosedError, StorageError, StorageLockedError

SCHEMA_VERSION = 5
NODE_SHIFT = 42  # node positions < 2**42 (the schema 1 to 3 rowids: log_id << 42 | node)
MAX_LOGS = 1 << 21  # log ids fit beside a node position in a signed 64-bit rowid

# sqlite3 adapts every parameter that is not an exact int, float, str or bytearray: bytes and
# None are looked up in its adapter registry, then (CPython 3.11) as ``__adapt__`` on its
# protocol type, which formats an AttributeError and throws it away: about 0.4 us per bytes or
# None parameter, a third of a tree row's insert. An identity adapter in the registry ends the
# lookup there (same values bound); an adapter someone registered first is left alone.
if (bytes, sqlite3.PrepareProtocol) not in sqlite3.adapters:
    sqlite3.register_adapter(bytes, bytes.__bytes__)
if (type(None), sqlite3.PrepareProtocol) not in sqlite3.adapters:
    sqlite3.register_adapter(type(None), lambda value: value)

_LOGS = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    name TEXT UNIQUE,
    manifest BLOB,
    fork INTEGER NOT NULL,
    signature BLOB,
    frozen INTEGER NOT NULL
)"""
_SCHEMA = f"""{_LOGS.format(name="logs")};
CREATE TABLE IF NOT EXISTS records (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""
_FLAT_MASK = (1 << NODE_SHIFT) - 1

NodeRow = tuple[int, int, bytes, bytes | None]  # (position, size, hash, leaf's block)
SignedRow = tuple[int, int, bytes, bytes | None, bytes | None]  # a NodeRow and a signature


def _tree(log_id: int) -> str:
    """The name of the table holding the tree (nodes and blocks) of log ``log_id`` (the hot
    paths below inline it as ``log_{log_id}``: log ids are always ints)."""
    return f"log_{int(log_id)}"


def _create_tree(db: sqlite3.Connection, log_id: int, *, version: int = SCHEMA_VERSION) -> None:
    signature = ", signature BLOB" if version >= 5 else ""
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {_tree(log_id)} (id INTEGER PRIMARY KEY,"
        f" size INTEGER NOT NULL, hash BLOB NOT NULL, data BLOB{signature})"
    )


def _opt(value: bytes | None) -> bytes | None:
    return None if value is None else bytes(value)


def length_at(position: int) -> int:
    """The length whose last root is the node at ``position``: the inverse of
    ``leaf_post_order(length) - 1`` (appends create ``2 n - popcount(n)`` nodes for n blocks,
    a strictly increasing count, so the last stored position gives the length)."""
    created = position + 1
    length = (created + 1) // 2
    while 2 * length - length.bit_count() < created:
        length += 1
    return length


class Participant(Protocol):
    """Something holding in-memory state derived from the database (a Log)."""

    def reload(self) -> None: ...


@dataclass(slots=True)
class LogRow:
    """One log's header as stored."""

    id: int
    key: bytes
    name: str | None
    manifest: bytes | None
    length: int
    fork: int
    byte_length: int
    signature: bytes | None
    frozen: bool


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a folder of schema ``version`` (1 to 4) to the current one, one version step per
    transaction (a crash leaves a complete older version, which the next open carries on
    from)."""
    if version < 4:
        with _migration_step(db):
            _migrate_to_4(db, version)
    with _migration_step(db):
        _migrate_to_5(db)


@contextlib.contextmanager
def _migration_step(db: sqlite3.Connection) -> Iterator[None]:
    """One migration step, all or nothing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _migrate_to_4(db: sqlite3.Connection, version: int) -> None:
    """Move the trees of schema 1 (``blocks`` by ``log_id << 40 | index``, ``nodes`` by
    ``log_id << 42 | flat index``), 2 (``nodes`` by flat index, blocks in their leaf's row)
    or 3 (``nodes`` by ``log_id << 42 | position``, blocks in their leaf's row) into one table
    per log, in one transaction (``_migration_step``): a crash leaves the old version, which
    the next open migrates again."""
    from .log.flat_tree import post_order  # here: autobase_py.log imports this module

    for (log_id,) in db.execute("SELECT id FROM logs").fetchall():
        _create_tree(db, log_id, version=4)
    if version == 1:
        rows = db.execute(
            "SELECT n.id, n.size, n.hash, b.data FROM nodes n LEFT JOIN blocks b"
            " ON (n.id & 1) = 0 AND b.id = ((n.id >> 42) << 40) + ((n.id & ?) >> 1)",
            (_FLAT_MASK,),
        )
    else:
        rows = db.execute("SELECT id, size, hash, data FROM nodes")
    moved = 0
    batch: dict[int, list[tuple[int, int, bytes, bytes | None]]] = {}
    for count, (rowid, size, digest, data) in enumerate(rows, 1):  # streamed, in batches
        flat_or_position = rowid & _FLAT_MASK
        position = flat_or_position if version == 3 else post_order(flat_or_position)
        batch.setdefault(rowid >> NODE_SHIFT, []).append((position, size, digest, data))
        moved += data is not None
        if count % 10_000 == 0:
            _insert_trees(db, batch)
    _insert_trees(db, batch)
    if version == 1:
        blocks = db.execute("SELECT count(*) FROM blocks").fetchone()[0]
        if moved != blocks:
            raise StorageError(
                f"cannot migrate storage schema 1: {blocks - moved} stored blocks have no "
                "leaf node"
            )
        db.execute("DROP TABLE blocks")
    else:
        db.execute("DROP VIEW IF EXISTS blocks")
    db.execute("DROP TABLE nodes")
    db.execute("PRAGMA user_version=4")


def _migrate_to_5(db: sqlite3.Connection) -> None:
    """Schema 4 -> 5: each log's signature moves from its ``logs`` row into the row of its
    last root (its length and byte length are no longer stored: the last row's position and
    the roots give them), and the ``nodes``/``blocks`` views go. No tree row moves: one added
    column and one updated row per log, whatever the folder's size. Rows past a log's stored
    length (never written by schema 4, but they could not be trusted) are dropped."""
    from .log.flat_tree import leaf_post_order  # here: autobase_py.log imports this module

    db.execute("DROP VIEW IF EXISTS blocks")
    db.execute("DROP VIEW IF EXISTS nodes")
    logs = db.execute("SELECT id, length, signature FROM logs").fetchall()
    for log_id, length, signature in logs:
        table = _tree(log_id)
        db.execute(f"ALTER TABLE {table} ADD COLUMN signature BLOB")
        end = leaf_post_order(length)
        db.execute(f"DELETE FROM {table} WHERE id >= ?", (end,))
        if not length:
            continue
        moved = db.execute(f"UPDATE {table} SET signature = ? WHERE id = ?", (signature, end - 1))
        if moved.rowcount != 1:
            raise StorageError(
                f"cannot migrate storage schema 4: log {log_id} lacks the last root of "
                f"its length {length}"
            )
    db.execute(_LOGS.format(name="logs_5"))
    db.execute(
        "INSERT INTO logs_5 SELECT id, key, name, manifest, fork,"
        " CASE WHEN length = 0 THEN signature END, frozen FROM logs"
    )
    db.execute("DROP TABLE logs")
    db.execute("ALTER TABLE logs_5 RENAME TO logs")
    db.execute("PRAGMA user_version=5")


def _insert_trees(
    db: sqlite3.Connection, batch: dict[int, list[tuple[int, int, bytes, bytes | None]]]
) -> None:
    for log_id, rows in batch.items():
        db.executemany(f"INSERT INTO {_tree(log_id)} VALUES (?, ?, ?, ?)", rows)
    batch.clear()


class _FlatLevel:
    """An inner level of a flat transaction: no savepoint, an escaping exception dooms the
    whole transaction (a class: cheaper to enter than a generator context manager)."""

    __slots__ = ("_level", "_storage")

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._level = storage._depth

    def __enter__(self) -> None:
        self._storage._depth = self._level + 1

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        storage = self._storage
        storage._depth = self._level
        if exc_type is not None:
            storage._doomed = True


class Storage:
    """One storage folder: an exclusive lock and one SQLite database holding every log."""

    def __init__(
        self, path: Path, db: sqlite3.Connection, lock_fd: int, *, fsync: bool = True
    ) -> None:
        self.path = path
        self.fsync = fsync  # False: require_sync is ignored unless forced (see the header)
        self._db: sqlite3.Connection | None = db
        self._lock_fd = lock_fd
        self._depth = 0
        self._participants: dict[int, Participant] = {}
        self._sync_needed = False
        self._flat = False  # the running transaction was opened with flat=True
        self._doomed = False  # an exception escaped an inner level of a flat transaction
        self._idle_waiters: list[Callable[[], None]] = []  # call_when_idle callbacks
        self.syncs = 0  # fsyncs made at commit (for benchmarks and tests)

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, fsync: bool = True) -> Storage:
        """Open (creating if needed) the storage folder at ``path`` and take its lock.

        ``fsync=False`` turns off the per-commit WAL fsync of ``require_sync`` (see the
        header): commits stay atomic and survive ``kill -9``, not power loss."""
        folder = Path(path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(folder / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open storage folder {folder}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock_fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(lock_fd)
            raise StorageLockedError(
                f"storage folder {folder} is in use (locked by process {holder}); "
                "stop that process or use another folder"
            ) from None
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        db: sqlite3.Connection | None = None
        try:
            # statements are per log table: keep many prepared
            db = sqlite3.connect(
                folder / "db.sqlite",
                isolation_level=None,
                check_same_thread=False,
                cached_statements=1024,
            )
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"SQLite refused WAL mode (got {mode})")
            db.execute("PRAGMA synchronous=NORMAL")  # fsync on demand: see require_sync
            db.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache
            # WAL checkpoints fsync the WAL and the database file (synchronous=NORMAL): run
            # them every 8192 pages (32 MiB) instead of 1000, and keep the WAL file at most
            # that big afterwards
            db.execute("PRAGMA wal_autocheckpoint=8192")
            db.execute(f"PRAGMA journal_size_limit={32 * 1024 * 1024}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version in (1, 2, 3, 4):
                _migrate(db, version)
            elif version not in (0, SCHEMA_VERSION):
                raise StorageError(
                    f"storage schema version {version} is not supported (this version of "
                    f"autobase_py reads versions 1 to {SCHEMA_VERSION}); open the folder "
                    "with the autobase_py that wrote it"
                )
            if version == 0:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, StorageError) as exc:
            if db is not None:  # its exclusive lock on the file goes with it
                db.close()
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot open database in {folder}: {exc}") from exc
        return cls(folder, db, lock_fd, fsync=fsync)

    @classmethod
    def open_memory(cls) -> Storage:
        """A private in-memory database (no folder, no lock, not durable): for tests."""
        db = sqlite3.connect(
            ":memory:", isolation_level=None, check_same_thread=False, cached_statements=1024
        )
        db.executescript(_SCHEMA)
        return cls(Path(":memory:"), db, -1)

    def close(self) -> None:
        """Close the database and release the folder's lock. Idempotent."""
        if self._db is None:
            return
        db, self._db = self._db, None
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()
        finally:
            if self._lock_fd >= 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageClosedError(f"storage {self.path} is closed")
        return self._db

    # --- transactions ------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def call_when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no transaction is open (now, or right after the running
        one commits or rolls back). Lets another task wait for a transaction that spans awaits
        (a base's apply cycle) instead of writing into it or polling."""
        if self._depth == 0:
            callback()
        else:
            self._idle_waiters.append(callback)

    def _notify_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for callback in waiters:
            callback()

    def enlist(self, participant: Participant) -> None:
        """Ask to be reloaded from disk if the running transaction (or a level of it) rolls back."""
        self._participants[id(participant)] = participant

    def require_sync(self, *, force: bool = False) -> None:
        """Make the running (or next) outermost commit durable against power loss (unless the
        storage was opened with ``fsync=False`` and ``force`` is not set)."""
        if self.fsync or force:
            self._sync_needed = True

    def _sync(self) -> None:
        self._sync_needed = False
        if self._lock_fd < 0:
            return  # in-memory database
        wal = self.path / "db.sqlite-wal"
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing was written through the WAL
        except OSError as exc:
            raise StorageError(f"cannot open {wal} to fsync it: {exc}") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"fsync of {wal} failed: {exc}") from exc
        finally:
            os.close(fd)
        self.syncs += 1

    def transaction(self, *, flat: bool = False) -> contextlib.AbstractContextManager[None]:
        """Re-entrant transaction; the outermost level commits (with one fsync if anything in it
        called ``require_sync``), inner levels are savepoints. Any exception rolls the level
        back and reloads enlisted participants.

        ``flat=True`` (outermost level only) is for callers that treat the whole transaction
        as one unit and never carry on after an inner failure (the base's apply cycle): inner
        levels then cost no savepoint. An exception escaping an inner level dooms the whole
        transaction: if it is caught and the outermost level still exits normally, everything
        is rolled back and :class:`StorageError` raised, so a half-done inner write can never
        commit."""
        if self._depth and self._flat:  # the hot case (appends inside a base's cycle)
            return _FlatLevel(self)
        return self._transaction(flat)

    @contextlib.contextmanager
    def _transaction(self, flat: bool) -> Iterator[None]:
        level = self._depth
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE" if level == 0 else f"SAVEPOINT s{level}")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot begin transaction: {exc}") from exc
        self._depth = level + 1
        if level == 0:
            self._flat, self._doomed = flat, False
        try:
            yield
            if level == 0 and self._doomed:
                raise StorageError(
                    "an inner write of a flat transaction failed and its error was caught; "
                    "the whole transaction was rolled back"
                )
        except BaseException as exc:
            self._depth = level
            if level == 0:
                self._sync_needed = False
                self._flat = self._doomed = False
            try:
                self._rollback(level)
            finally:
                if level == 0:
                    self._notify_idle()
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"storage write failed: {exc}") from exc
            raise
        self._depth = level
        if level == 0:
            self._flat = False
        try:
            try:
                db.execute("COMMIT" if level == 0 else f"RELEASE s{level}")
            except sqlite3.Error as exc:
                self._rollback(level)
                raise StorageError(f"commit failed: {exc}") from exc
            if level == 0:
                self._participants.clear()
                if self._sync_needed:
                    self._sync()
        finally:
            if level == 0:
                self._notify_idle()

    def _rollback(self, level: int) -> None:
        db = self._db
        if db is not None and db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                if level == 0:
                    db.execute("ROLLBACK")
                else:
                    db.execute(f"ROLLBACK TO s{level}")
                    db.execute(f"RELEASE s{level}")
        participants = list(self._participants.values())
        if level == 0:
            self._participants.clear()
        for participant in participants:
            participant.reload()

    # --- records: a small ordered key-value table --------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        row = self.db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, key: bytes, value: bytes) -> None:
        self._write("INSERT OR REPLACE INTO records VALUES (?, ?)", (key, value))

    def delete(self, key: bytes) -> None:
        self._write("DELETE FROM records WHERE key = ?", (key,))

    def delete_prefix(self, prefix: bytes) -> None:
        self._write(*self._range_sql("DELETE FROM records", prefix))

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        """One statement: atomic by itself inside a transaction, its own commit outside one."""
        if self._depth:
            self.db.execute(sql, args)
            return
        with self.transaction():
            self.db.execute(sql, args)

    def iterate(
        self, prefix: bytes = b"", *, reverse: bool = False, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order (at most
        ``limit``, taken from the end when ``reverse``)."""
        sql, args = self._range_sql("SELECT key, value FROM records", prefix)
        sql += " ORDER BY key DESC" if reverse else " ORDER BY key"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [(bytes(k), bytes(v)) for k, v in self.db.execute(sql, args)]

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Store many records in one statement (atomically)."""
        if self._depth:
            self.db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?)", items)
            return
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?)", items)

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete every record with ``start <= key < end``."""
        self._write("DELETE FROM records WHERE key >= ? AND key < ?", (start, end))

    def floor(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        """The record with the greatest key ``<= key`` among keys starting with ``prefix``."""
        row = self.db.execute(
            "SELECT key, value FROM records WHERE key >= ? AND key <= ? ORDER BY key DESC "
            "LIMIT 1",
            (prefix, key),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    @staticmethod
    def _range_sql(head: str, prefix: bytes) -> tuple[str, tuple[bytes, ...]]:
        end = _prefix_end(prefix)
        if end is None:
            return f"{head} WHERE key >= ?", (prefix,)
        return f"{head} WHERE key >= ? AND key < ?", (prefix, end)

    # --- log tables (used by autobase_py.log) ------------------------------------------------

    def find_log(self, *, key: bytes | None = None, name: str | None = None) -> LogRow | None:
        """The header of the log with this key (or name). Its length is the one whose last
        root is the log's last stored row, its byte length the sum of that length's roots, its
        signature the one in that row (the ``logs`` row's while the log stores no row)."""
        db = self.db
        if key is not None:
            row = db.execute("SELECT * FROM logs WHERE key = ?", (key,)).fetchone()
        else:
            row = db.execute("SELECT * FROM logs WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        log_id, signature = row[0], row[5]
        length = byte_length = 0
        last = db.execute(
            f"SELECT id, signature FROM log_{log_id} ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if last is not None:
            from .log.flat_tree import full_roots, post_order  # autobase_py.log imports us

            position, signature = last
            length = length_at(position)
            if 2 * length - length.bit_count() != position + 1:
                raise StorageError(
                    f"log {log_id}'s last stored node (position {position}) is not the last "
                    "root of any length: the folder is damaged"
                )
            positions = [post_order(i) for i in full_roots(length)]
            byte_length = sum(self.get_nodes(log_id, positions)[p][0] for p in positions)
        return LogRow(
            id=log_id,
            key=bytes(row[1]),
            name=row[2],
            manifest=None if row[3] is None else bytes(row[3]),
            length=length,
            fork=row[4],
            byte_length=byte_length,
            signature=None if signature is None else bytes(signature),
            frozen=bool(row[6]),
        )

    def create_log(self, key: bytes, manifest: bytes | None, name: str | None = None) -> LogRow:
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO logs (key, name, manifest, fork, signature, frozen)"
                " VALUES (?, ?, ?, 0, NULL, 0)",
                (key, name, manifest),
            )
            log_id = cursor.lastrowid
            if log_id is None or log_id >= MAX_LOGS:
                raise StorageError("too many logs in one storage folder")
            _create_tree(self.db, log_id)
        return LogRow(log_id, key, name, manifest, 0, 0, 0, None, False)

    def write_log_state(
        self, log_id: int, fork: int, signature: bytes | None, *, frozen: bool = False
    ) -> None:
        """Store the ``logs`` row's part of a header: the fork, the frozen flag, and the
        signature of the empty tree (used only while the log stores no row)."""
        self.db.execute(
            "UPDATE logs SET fork = ?, signature = ?, frozen = ? WHERE id = ?",
            (fork, signature, int(frozen), log_id),
        )

    def set_signature(self, log_id: int, position: int, signature: bytes | None) -> None:
        """Store the signature of the log's length (None: unsigned) in the row at
        ``position``, that length's last root (a missing row is left alone)."""
        self.db.execute(
            f"UPDATE log_{log_id} SET signature = ? WHERE id = ?", (signature, position)
        )

    def set_manifest(self, log_id: int, manifest: bytes) -> None:
        self.db.execute("UPDATE logs SET manifest = ? WHERE id = ?", (manifest, log_id))

    def append_tree(self, log_id: int, rows: Sequence[SignedRow]) -> None:
        """Store (position, size, hash, block, signature) rows that are all new (an append's:
        the right end of the log's table) in one statement."""
        self.db.executemany(f"INSERT INTO log_{log_id} VALUES (?, ?, ?, ?, ?)", rows)

    def put_tree(self, log_id: int, rows: Sequence[NodeRow]) -> None:
        """Store (position, size, hash, block) rows, new or not: nodes, and the block of each
        leaf row that has one (None keeps the leaf's stored block, if any); a row's signature
        stays. One statement: the hot path of replicated ranges."""
        self.db.executemany(
            f"INSERT INTO log_{log_id} VALUES (?, ?, ?, ?, NULL) ON CONFLICT (id) DO UPDATE SET"
            " size = excluded.size, hash = excluded.hash, data = coalesce(excluded.data, data)",
            rows,
        )

    def put_block(self, log_id: int, position: int, block: bytes) -> None:
        """Store a block beside its leaf node (at ``position``), which must be stored already."""
        cursor = self.db.execute(
            f"UPDATE log_{log_id} SET data = ? WHERE id = ?", (block, position)
        )
        if cursor.rowcount != 1:
            raise StorageError(f"no stored leaf node at position {position} for a block")

    def get_block(self, log_id: int, position: int) -> bytes | None:
        """The block stored in the leaf row at ``position``, or None."""
        row = self.db.execute(
            f"SELECT data FROM log_{log_id} WHERE id = ?", (position,)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def get_blocks(self, log_id: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """(position, block) of every stored block whose leaf is at a position in
        ``[start, end)``, in order (one query)."""
        return [
            (position, bytes(data))
            for position, data in self.db.execute(
                f"SELECT id, data FROM log_{log_id} WHERE id >= ? AND id < ?"
                " AND data IS NOT NULL ORDER BY id",
                (start, end),
            )
        ]

    def has_block(self, log_id: int, position: int) -> bool:
        row = self.db.execute(
            f"SELECT data IS NOT NULL FROM log_{log_id} WHERE id = ?", (position,)
        ).fetchone()
        return row is not None and bool(row[0])

    def get_node(self, log_id: int, position: int) -> tuple[int, bytes] | None:
        """(size, hash) of the node stored at ``position``, or None."""
        row = self.db.execute(
            f"SELECT size, hash FROM log_{log_id} WHERE id = ?", (position,)
        ).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def get_nodes(self, log_id: int, positions: list[int]) -> dict[int, tuple[int, bytes]]:
        """{position: (size, hash)} for those of ``positions`` that are stored (one query)."""
        if not positions:
            return {}
        marks = ",".join("?" * len(positions))
        rows = self.db.execute(
            f"SELECT id, size, hash FROM log_{log_id} WHERE id IN ({marks})", positions
        )
        return {position: (size, bytes(h)) for position, size, h in rows}

    def truncate_log(self, log_id: int, position: int) -> None:
        """Drop the log's nodes and blocks at positions >= ``position`` (one statement)."""
        self.db.execute(f"DELETE FROM log_{log_id} WHERE id >= ?", (position,))

    def retain_runs(self, log_id: int, runs: Iterable[tuple[int, int]]) -> None:
        """Drop every node and block of the log outside the given (first, last) runs of
        positions (a subtree's nodes are one run)."""
        gaps = []
        start = 0
        for first, last in sorted(runs):
            if first > start:
                gaps.append((start, first))
            start = max(start, last + 1)
        gaps.append((start, 1 << NODE_SHIFT))
        self.db.executemany(f"DELETE FROM log_{log_id} WHERE id >= ? AND id < ?", gaps)

    def count_blocks(self, log_id: int) -> int:
        row = self.db.execute(f"SELECT count(data) FROM log_{log_id}").fetchone()
        return int(row[0])

    def tree_rows(
        self, log_id: int | None = None
    ) -> list[tuple[int, int, int, bytes, bytes | None, bytes | None]]:
        """Every stored row of the log ``log_id`` (of every log when None) as (log id,
        position, size, hash, block or None, signature or None), by log then position: for
        inspection and tests (a folder's logs have a table each; no view spans them)."""
        ids = (
            [log_id]
            if log_id is not None
            else [i for (i,) in self.db.execute("SELECT id FROM logs ORDER BY id")]
        )
        return [
            (i, position, size, bytes(digest), _opt(data), _opt(signature))
            for i in ids
            for position, size, digest, data, signature in self.db.execute(
                f"SELECT id, size, hash, data, signature FROM {_tree(i)} ORDER BY id"
            )
        ]

    def log_keys(self) -> list[tuple[bytes, str | None]]:
        """(key, name) of every log in the folder, in creation order."""
        return [(bytes(k), n) for k, n in self.db.execute("SELECT key, name FROM logs ORDER BY id")]


__all__ = [
    "NODE_SHIFT",
    "SCHEMA_VERSION",
    "LogRow",
    "NodeRow",
    "Participant",
    "SignedRow",
    "Storage",
    "length_at",
]
