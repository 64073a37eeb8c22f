"""Storage schema 4: a table per log, nodes keyed by creation (post-order) position, each
block in its leaf node's row; folders of versions 1 (one node table by flat index, blocks in a
table of their own), 2 (blocks in leaf rows) and 3 (nodes by position) are migrated on open;
unknown versions are refused."""

from __future__ import annotations

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


def _write_old(folder: Path, source: Storage, version: int) -> None:
    """A folder of schema ``version`` (1 to 3) holding what ``source`` holds."""
    folder.mkdir()
    db = sqlite3.connect(folder / "db.sqlite")
    db.executescript({1: _SCHEMA_1, 2: _SCHEMA_2, 3: _SCHEMA_3}[version])
    src = source.db
    db.executemany("INSERT INTO logs VALUES (?,?,?,?,?,?,?,?,?)", src.execute("SELECT * FROM logs"))
    db.executemany("INSERT INTO records VALUES (?,?)", src.execute("SELECT * FROM records"))
    mask = (1 << NODE_SHIFT) - 1
    for rowid, size, digest, data in src.execute("SELECT * FROM nodes"):
        log_id, flat = rowid >> NODE_SHIFT, FLAT[rowid & mask]
        old_rowid = (log_id << NODE_SHIFT) + flat  # schema 1 and 2: nodes by flat index
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
        # the inspection view: rowid log_id << 42 | position
        base = writer._id << NODE_SHIFT
        assert storage.db.execute("SELECT * FROM blocks ORDER BY id").fetchall() == [
            (base + p, b) for p, b in [(0, b"a"), (1, b"bc"), (3, b"def"), (4, b"g")]
        ]
        # a truncation keeps exactly the positions below the cut's leaf
        writer.truncate(3)
        kept = [i for (i,) in storage.db.execute(f"SELECT id FROM {table} ORDER BY id")]
        assert kept == [0, 1, 2, 3]
        assert storage.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_an_uncle_leaf_never_erases_the_block_stored_in_its_row() -> None:
    writer = Log.create(Storage.open_memory(), crypto.key_pair(bytes([3]) * 32))
    writer.append([b"b%d" % i for i in range(8)])
    replica = Log.replica(Storage.open_memory(), writer.key)
    replica.apply_proof(writer.proof(5, upgrade_from=0))
    # block 4's range proof carries leaf 10 (block 5) as an uncle, without block 5
    replica.apply_range(writer.range_proof(4, 5))
    # block 4's per-block proof: its leaf is stored already (trusted), so the block goes
    # into that row
    replica.apply_proof(writer.proof(4))
    assert [replica.get(i) for i in (4, 5)] == [b"b4", b"b5"]
    assert replica.storage.count_blocks(replica._id) == 2


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_old_folder_is_migrated_on_open(tmp_path: Path, version: int) -> None:
    storage, writer, replica = _filled(tmp_path)
    expected = {
        table: storage.db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
        for table in ("logs", "blocks", "nodes")
    }
    _write_old(tmp_path / "old", storage, version)
    storage.close()
    with Storage.open(tmp_path / "old") as migrated:
        assert migrated.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        for table, rows in expected.items():
            assert migrated.db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() == rows
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
    db.execute("PRAGMA user_version=5")
    db.close()
    for _ in range(2):  # the failed open released the folder's lock and SQLite's
        with pytest.raises(StorageError, match="schema version 5 is not supported"):
            Storage.open(tmp_path / "s")


def test_every_log_has_its_own_table_and_the_views_cover_them(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "s") as storage:
        logs = [Log.create(storage, crypto.key_pair(bytes([i]) * 32)) for i in (5, 6, 7)]
        for n, log in enumerate(logs):
            log.append([b"%d" % n] * (n + 1))
        tables = {
            name
            for (name,) in storage.db.execute("SELECT name FROM sqlite_schema WHERE type='table'")
        }
        assert {f"log_{log._id}" for log in logs} <= tables
        views = storage.db.execute("SELECT id >> ?, count(*) FROM blocks GROUP BY 1", (NODE_SHIFT,))
        assert views.fetchall() == [(log._id, n + 1) for n, log in enumerate(logs)]
        with pytest.raises(KeyError), storage.transaction():
            gone = Log.create(storage, crypto.key_pair(bytes([8]) * 32))
            raise KeyError  # a log created in a rolled-back transaction leaves no table
        assert len(storage.log_keys()) == 3
        assert f"log_{gone._id}" not in {
            name
            for (name,) in storage.db.execute("SELECT name FROM sqlite_schema WHERE type='table'")
        }
        assert storage.db.execute("SELECT count(*) FROM blocks").fetchone()[0] == 6
    with Storage.open(tmp_path / "s") as storage:  # reopened: same tables, same views
        assert storage.db.execute("SELECT count(*) FROM blocks").fetchone()[0] == 6
