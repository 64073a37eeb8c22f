"""Storage schema 5: a table per log, nodes keyed by creation (post-order) position, each
block in its leaf node's row, the log's signature in its last root's row (length and byte
length follow from the rows), no view spanning the logs (``Storage.tree_rows`` inspects them);
folders of versions 1 (one node table by flat index, blocks in a table of their own), 2
(blocks in leaf rows), 3 (nodes by position) and 4 (a table per log, the header in ``logs``,
inspection views) are migrated on open; unknown versions are refused."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from autobase_py import crypto
from autobase_py.errors import StorageError
from autobase_py.log import Log, flat_tree, merkle
from autobase_py.storage import NODE_SHIFT, SCHEMA_VERSION, Storage

BLOCK_SHIFT = 40  # schema 1's block rowids: log_id << 40 | index
FLAT = {flat_tree.post_order(i): i for i in range(1 << 14)}  # position -> flat index

# Schema version 1, as written by earlier releases (kept literally: it is a file format).
_SCHEMA_1 = """
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    name TEXT UNIQUE,
    manifest BLOB,
    length INTEGER NOT NULL,
    fork INTEGER NOT NULL,
    byte_length INTEGER NOT NULL,
    signature BLOB,
    frozen INTEGER NOT NULL
);
CREATE TABLE blocks (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE nodes (id INTEGER PRIMARY KEY, size INTEGER NOT NULL, hash BLOB NOT NULL);
CREATE TABLE records (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
PRAGMA user_version=1;
"""


_SCHEMA_2 = (
    _SCHEMA_1.replace("CREATE TABLE blocks (id INTEGER PRIMARY KEY, data BLOB NOT NULL);\n", "")
    .replace("hash BLOB NOT NULL);", "hash BLOB NOT NULL, data BLOB);")
    .replace("user_version=1", "user_version=2")
)
_SCHEMA_3 = _SCHEMA_2.replace("user_version=2", "user_version=3") + (
    "CREATE VIEW blocks (id, data) AS SELECT id, data FROM nodes WHERE data IS NOT NULL;"
)
_SCHEMA_4 = "\n".join(  # the logs and records tables of schema 1, a table per log (below)
    line
    for line in _SCHEMA_1.replace("user_version=1", "user_version=4").splitlines()
    if not line.startswith(("CREATE TABLE blocks", "CREATE TABLE nodes"))
)


def _write_old(folder: Path, source: Storage, version: int) -> None:
    """A folder of schema ``version`` (1 to 4) holding what ``source`` holds."""
    folder.mkdir()
    db = sqlite3.connect(folder / "db.sqlite")
    db.executescript({1: _SCHEMA_1, 2: _SCHEMA_2, 3: _SCHEMA_3, 4: _SCHEMA_4}[version])
    src = source.db
    for (key,) in src.execute("SELECT key FROM logs ORDER BY id").fetchall():
        row = source.find_log(key=key)
        assert row is not None
        # LogRow's fields are the columns of schema 1 to 4's logs table, in order
        db.execute("INSERT INTO logs VALUES (?,?,?,?,?,?,?,?,?)", dataclasses.astuple(row))
        if version == 4:
            db.execute(
                f"CREATE TABLE log_{row.id} (id INTEGER PRIMARY KEY, size INTEGER NOT NULL,"
                " hash BLOB NOT NULL, data BLOB)"
            )
    if version == 4:  # its inspection views, as schema 4 kept them
        parts = " UNION ALL ".join(
            f"SELECT ({i} << 42) + id AS id, size, hash, data FROM log_{i}"
            for (i,) in src.execute("SELECT id FROM logs ORDER BY id")
        )
        db.execute(f"CREATE VIEW nodes AS {parts}")
        db.execute("CREATE VIEW blocks AS SELECT id, data FROM nodes WHERE data IS NOT NULL")
    db.executemany("INSERT INTO records VALUES (?,?)", src.execute("SELECT * FROM records"))
    for log_id, position, size, digest, data, _ in source.tree_rows():
        rowid = (log_id << NODE_SHIFT) + position
        flat = FLAT[position]
        old_rowid = (log_id << NODE_SHIFT) + flat  # schema 1 and 2: nodes by flat index
        if version == 4:
            db.execute(f"INSERT INTO log_{log_id} VALUES (?,?,?,?)", (position, size, digest, data))
            continue
        if version == 3:  # the views' rowids: log_id << 42 | position
            db.execute("INSERT INTO nodes VALUES (?,?,?,?)", (rowid, size, digest, data))
            continue
        if version == 2:
            db.execute("INSERT INTO nodes VALUES (?,?,?,?)", (old_rowid, size, digest, data))
            continue
        db.execute("INSERT INTO nodes VALUES (?,?,?)", (old_rowid, size, digest))
        if data is not None:
            db.execute(
                "INSERT INTO blocks VALUES (?,?)", ((log_id << BLOCK_SHIFT) + flat // 2, data)
            )
    db.commit()
    db.close()


def _filled(tmp_path: Path) -> tuple[Storage, Log, Log]:
    """A writer with 21 blocks (one truncated away and re-appended) and a sparse replica."""
    storage = Storage.open(tmp_path / "src")
    writer = Log.create(storage, crypto.key_pair(bytes([1]) * 32))
    writer.append([b"block %d" % i for i in range(13)])
    writer.truncate(12)
    writer.append([b"again %d" % i for i in range(9)])
    source = Log.create(Storage.open_memory(), crypto.key_pair(bytes(32)))
    source.append([b"r%d" % i for i in range(10)])
    replica = Log.replica(storage, source.key)
    replica.apply_proof(source.proof(3, upgrade_from=0))
    replica.apply_proof(source.proof(7))
    storage.put(b"test/record", b"kept")
    # more rows than the migration moves per batch
    Log.create(storage, crypto.key_pair(bytes([9]) * 32)).append([b"%d" % i for i in range(6000)])
    return storage, writer, replica


def test_an_append_writes_one_run_of_rows_in_creation_order(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "s") as storage:
        writer = Log.create(storage, crypto.key_pair(bytes([2]) * 32))
        writer.append([b"a", b"bc", b"def"])
        table = f"log_{writer._id}"  # the log's own table, keyed by position
        rows = storage.db.execute(f"SELECT id, size, data FROM {table} ORDER BY id").fetchall()
        # leaf 0, leaf 1, their parent (flat 1), leaf 2: each block in its leaf's row
        assert rows == [
            (0, 1, b"a"),
            (1, 2, b"bc"),
            (2, 3, None),
            (3, 3, b"def"),
        ]
        writer.append([b"g"])  # leaf 3, parents flat 5 and 3: positions 4, 5, 6
        assert storage.db.execute(f"SELECT max(id) FROM {table}").fetchone()[0] == 6
        assert [(r[1], r[4]) for r in storage.tree_rows(writer._id) if r[4] is not None] == [
            (0, b"a"),
            (1, b"bc"),
            (3, b"def"),
            (4, b"g"),
        ]
        # a truncation keeps exactly the positions below the cut's leaf
        writer.truncate(3)
        kept = [i for (i,) in storage.db.execute(f"SELECT id FROM {table} ORDER BY id")]
        assert kept == [0, 1, 2, 3]
        assert storage.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5


def _last_row(storage: Storage, log: Log) -> tuple[int, bytes | None] | None:
    """(position, signature) of the last tree row of ``log``, if any."""
    rows = storage.tree_rows(log._id)
    return (rows[-1][1], rows[-1][5]) if rows else None


def _end(length: int) -> int:
    return flat_tree.leaf_post_order(length) - 1  # the position of length's last root


def test_the_header_lives_in_the_last_root_row(tmp_path: Path) -> None:
    """An append writes no ``logs`` row: its last row (the new last root) holds the new
    signature; length and byte length come from the rows on reopen. Only while a log stores
    no row does its signature live in ``logs`` (its fork always does)."""
    with Storage.open(tmp_path / "s") as storage:
        writer = Log.create(storage, crypto.key_pair(bytes([4]) * 32))
        logs_row = storage.db.execute("SELECT * FROM logs").fetchall()
        for n in (1, 2, 3, 4, 5):
            writer.append([b"%d" % n] * n)
            assert storage.db.execute("SELECT * FROM logs").fetchall() == logs_row
            assert _last_row(storage, writer) == (_end(writer.length), writer.signature)
        writer.truncate(7)  # fork 1: the cut's last root holds the new signature
        assert _last_row(storage, writer) == (_end(7), writer.signature)
        assert storage.db.execute("SELECT fork, signature FROM logs").fetchall() == [(1, None)]
        header = (writer.length, writer.fork, writer.byte_length, writer.signature)
    with Storage.open(tmp_path / "s") as storage:
        again = Log.create(storage, crypto.key_pair(bytes([4]) * 32))
        assert (again.length, again.fork, again.byte_length, again.signature) == header
        assert again.byte_length == sum(len(again.get(i)) for i in range(7))
        again.truncate(0)
        assert _last_row(storage, again) is None
        assert storage.db.execute("SELECT fork, signature FROM logs").fetchall() == [
            (2, again.signature)
        ]
        assert again.signature is not None
        again.append([b"x"])
        assert _last_row(storage, again) == (0, again.signature)
        pair = crypto.key_pair(bytes([5]) * 32)
        view = Log.create(storage, pair)
        view.signed_appends = False
        view.append([b"v"] * 5)
        assert [r[5] for r in storage.tree_rows(view._id)] == [None] * 8
    with Storage.open(tmp_path / "s") as storage:
        view = Log.create(storage, pair)
        assert (view.length, view.byte_length, view.signature) == (5, 5, None)


def test_a_replica_keeps_its_signature_in_its_last_root_row() -> None:
    source = Log.create(Storage.open_memory(), crypto.key_pair(bytes([6]) * 32))
    source.append([b"s%d" % i for i in range(6)])
    storage = Storage.open_memory()
    replica = Log.replica(storage, source.key)
    replica.apply_proof(source.proof(2, upgrade_from=0))
    assert _last_row(storage, replica) == (_end(6), source.signature)
    source.append([b"more"] * 5)
    replica.apply_range(source.range_proof(6, 11, upgrade_from=6))
    assert _last_row(storage, replica) == (_end(11), source.signature)
    source.truncate(9)  # a newer fork: the replica follows with an upgrade from 0
    source.append([b"new"])
    replica.apply_proof(source.proof(None, upgrade_from=0))
    assert _last_row(storage, replica) == (_end(10), source.signature)
    # a certified upgrade whose signature is not checked stores none
    source.append([b"cert"])
    upgrade = source.proof(None, upgrade_from=10)
    assert upgrade.upgrade is not None
    unsigned = dataclasses.replace(
        upgrade, upgrade=dataclasses.replace(upgrade.upgrade, signature=bytes(64))
    )
    replica.apply_proof(unsigned, trusted_tree_hash=source.tree_hash())
    assert _last_row(storage, replica) == (_end(11), None)
    reread = storage.find_log(key=source.key)
    assert reread is not None
    assert (reread.length, reread.fork, reread.byte_length, reread.signature) == (
        source.length,
        source.fork,
        source.byte_length,
        None,
    )


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_an_old_folder_is_migrated_on_open(tmp_path: Path, version: int) -> None:
    storage, writer, replica = _filled(tmp_path)

    def content(storage: Storage) -> tuple[object, ...]:
        """Every header, and every tree row without its signature (a migration keeps only a
        log's current signature, in its last root's row; appends leave theirs)."""
        keys = [bytes(k) for (k,) in storage.db.execute("SELECT key FROM logs ORDER BY id")]
        return (
            [storage.find_log(key=k) for k in keys],
            [r[:5] for r in storage.tree_rows()],
        )

    expected = content(storage)
    _write_old(tmp_path / "old", storage, version)
    storage.close()
    with Storage.open(tmp_path / "old") as migrated:
        assert migrated.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert content(migrated) == expected
        assert (
            migrated.db.execute("SELECT name FROM sqlite_schema WHERE type = 'view'").fetchall()
            == []
        )
        assert migrated.get(b"test/record") == b"kept"
        again = Log.create(migrated, crypto.key_pair(bytes([1]) * 32))
        assert (again.length, again.fork, again.tree_hash()) == (
            writer.length,
            writer.fork,
            writer.tree_hash(),
        )
        assert again.get(11) == b"block 11" and again.get(20) == b"again 8"
        # it keeps appending and proving from the migrated rows
        again.append([b"new"])
        fresh = Log.replica(Storage.open_memory(), again.key)
        fresh.apply_proof(again.proof(5, upgrade_from=0))
        assert fresh.get(5) == b"block 5"
        sparse = Log.replica(migrated, replica.key)
        assert [sparse.has(i) for i in range(10)] == [i in (3, 7) for i in range(10)]
        big = Log.create(migrated, crypto.key_pair(bytes([9]) * 32))
        assert big.length == 6000 and big.get(5999) == b"5999"
        assert big.tree_hash() == big.tree_hash(6000) == merkle.tree_hash(big._stored_roots(6000))


def test_a_version_1_block_without_its_leaf_node_stops_the_migration(tmp_path: Path) -> None:
    storage, writer, _ = _filled(tmp_path)
    _write_old(tmp_path / "old", storage, 1)
    storage.close()
    db = sqlite3.connect(tmp_path / "old" / "db.sqlite")
    db.execute("DELETE FROM nodes WHERE id = ?", ((writer._id << NODE_SHIFT) + 2 * 4,))
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="1 stored blocks have no leaf node"):
        Storage.open(tmp_path / "old")
    db = sqlite3.connect(tmp_path / "old" / "db.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1  # rolled back, untouched
    assert db.execute("SELECT count(*) FROM blocks").fetchone()[0] == writer.length + 2 + 6000
    db.close()


def test_an_unknown_schema_version_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    Storage.open(tmp_path / "s").close()
    db = sqlite3.connect(tmp_path / "s" / "db.sqlite")
    db.execute("PRAGMA user_version=6")
    db.close()
    for _ in range(2):  # the failed open released the folder's lock and SQLite's
        with pytest.raises(StorageError, match="schema version 6 is not supported"):
            Storage.open(tmp_path / "s")


def test_a_version_4_log_without_the_last_root_of_its_length_stops_the_migration(
    tmp_path: Path,
) -> None:
    storage, writer, _ = _filled(tmp_path)
    _write_old(tmp_path / "old", storage, 4)
    storage.close()
    db = sqlite3.connect(tmp_path / "old" / "db.sqlite")
    last = flat_tree.leaf_post_order(writer.length) - 1
    db.execute(f"DELETE FROM log_{writer._id} WHERE id = ?", (last,))
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="lacks the last root of its length 21"):
        Storage.open(tmp_path / "old")
    db = sqlite3.connect(tmp_path / "old" / "db.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4  # rolled back, untouched
    assert db.execute("SELECT length FROM logs WHERE id = ?", (writer._id,)).fetchone()[0] == 21
    # every block but the deleted leaf's (block 20: length 21's last root is a leaf)
    assert db.execute("SELECT count(*) FROM blocks").fetchone()[0] == writer.length + 2 + 6000 - 1
    db.close()


def test_every_log_has_its_own_table_and_tree_rows_cover_them(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "s") as storage:
        logs = [Log.create(storage, crypto.key_pair(bytes([i]) * 32)) for i in (5, 6, 7)]
        for n, log in enumerate(logs):
            log.append([b"%d" % n] * (n + 1))
        tables = {
            name
            for (name,) in storage.db.execute("SELECT name FROM sqlite_schema WHERE type='table'")
        }
        assert {f"log_{log._id}" for log in logs} <= tables
        blocks = [(r[0], r[4]) for r in storage.tree_rows() if r[4] is not None]
        assert blocks == [(log._id, b"%d" % n) for n, log in enumerate(logs) for _ in range(n + 1)]
        with pytest.raises(KeyError), storage.transaction():
            gone = Log.create(storage, crypto.key_pair(bytes([8]) * 32))
            raise KeyError  # a log created in a rolled-back transaction leaves no table
        assert len(storage.log_keys()) == 3
        assert f"log_{gone._id}" not in {
            name
            for (name,) in storage.db.execute("SELECT name FROM sqlite_schema WHERE type='table'")
        }
        assert storage.tree_rows(logs[2]._id) == [
            r for r in storage.tree_rows() if r[0] == logs[2]._id
        ]
    with Storage.open(tmp_path / "s") as storage:  # reopened: the same rows
        assert sum(r[4] is not None for r in storage.tree_rows()) == 6


def test_creating_logs_changes_no_other_schema_and_inspection_covers_them_all() -> None:
    """Past 400 logs too (the views of schema 4 stopped there: SQLite caps a compound
    SELECT); a new log adds its own table and nothing else."""
    storage = Storage.open_memory()
    logs = []
    for i in range(450):
        schema = storage.db.execute("SELECT type, name, sql FROM sqlite_schema").fetchall()
        log = Log.create(storage, crypto.key_pair(i.to_bytes(32, "big")))
        added = set(storage.db.execute("SELECT type, name, sql FROM sqlite_schema")) - set(schema)
        assert [(t, n) for t, n, _ in added] == [("table", f"log_{log._id}")]
        logs.append(log)
    for log in logs[::50] + logs[-1:]:
        log.append([log.key])
    assert [(r[0], r[4]) for r in storage.tree_rows() if r[4] is not None] == [
        (log._id, log.key) for log in logs[::50] + logs[-1:]
    ]
