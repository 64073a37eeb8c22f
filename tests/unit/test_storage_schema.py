"""Storage schema: blocks live in their leaf node's row (version 2); a version-1 folder (blocks
in a table of their own) is migrated on open; unknown versions are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from autobase_py import crypto
from autobase_py.errors import StorageError
from autobase_py.log import Log
from autobase_py.storage import BLOCK_SHIFT, NODE_SHIFT, SCHEMA_VERSION, Storage

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


def _write_version_1(folder: Path, source: Storage) -> None:
    """A version-1 folder holding what ``source`` holds (logs, blocks, nodes, records)."""
    folder.mkdir()
    db = sqlite3.connect(folder / "db.sqlite")
    db.executescript(_SCHEMA_1)
    src = source.db
    db.executemany("INSERT INTO logs VALUES (?,?,?,?,?,?,?,?,?)", src.execute("SELECT * FROM logs"))
    nodes = src.execute("SELECT id, size, hash FROM nodes")
    db.executemany("INSERT INTO nodes VALUES (?,?,?)", nodes)
    db.executemany("INSERT INTO records VALUES (?,?)", src.execute("SELECT * FROM records"))
    base = 1 << BLOCK_SHIFT
    blocks = []
    for log_id, length in src.execute("SELECT id, length FROM logs"):
        for index in range(length):
            block = source.get_block(log_id, index)
            if block is not None:
                blocks.append((log_id * base + index, block))
    db.executemany("INSERT INTO blocks VALUES (?,?)", blocks)
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
    return storage, writer, replica


def test_a_block_shares_its_leaf_nodes_row(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "s") as storage:
        writer = Log.create(storage, crypto.key_pair(bytes([2]) * 32))
        writer.append([b"a", b"bc", b"def"])
        rows = storage.db.execute("SELECT id, size, data FROM nodes ORDER BY id").fetchall()
        base = writer._id << NODE_SHIFT
        assert [(i - base, s, d) for i, s, d in rows] == [
            (0, 1, b"a"),
            (1, 3, None),
            (2, 2, b"bc"),
            (4, 3, b"def"),
        ]
        # the blocks view shows them with their block-index rowids
        assert storage.db.execute("SELECT * FROM blocks ORDER BY id").fetchall() == [
            ((writer._id << BLOCK_SHIFT) + i, b) for i, b in enumerate([b"a", b"bc", b"def"])
        ]
        assert storage.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_an_uncle_leaf_never_erases_the_block_stored_in_its_row() -> None:
    writer = Log.create(Storage.open_memory(), crypto.key_pair(bytes([3]) * 32))
    writer.append([b"b%d" % i for i in range(8)])
    replica = Log.replica(Storage.open_memory(), writer.key)
    replica.apply_proof(writer.proof(5, upgrade_from=0))
    # block 4's range proof carries leaf 10 (block 5) as an uncle, without block 5
    replica.apply_range(writer.range_proof(4, 5))
    # block 5's per-block proof: its leaf is stored already (trusted), so the block goes
    # into that row
    replica.apply_proof(writer.proof(4))
    assert [replica.get(i) for i in (4, 5)] == [b"b4", b"b5"]
    assert replica.storage.count_blocks(replica._id) == 2


def test_version_1_folder_is_migrated_on_open(tmp_path: Path) -> None:
    storage, writer, replica = _filled(tmp_path)
    expected = {
        table: storage.db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
        for table in ("logs", "blocks", "nodes")
    }
    _write_version_1(tmp_path / "old", storage)
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


def test_a_version_1_block_without_its_leaf_node_stops_the_migration(tmp_path: Path) -> None:
    storage, writer, _ = _filled(tmp_path)
    _write_version_1(tmp_path / "old", storage)
    storage.close()
    db = sqlite3.connect(tmp_path / "old" / "db.sqlite")
    db.execute("DELETE FROM nodes WHERE id = ?", ((writer._id << NODE_SHIFT) + 2 * 4,))
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="1 stored blocks have no leaf node"):
        Storage.open(tmp_path / "old")
    db = sqlite3.connect(tmp_path / "old" / "db.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1  # rolled back, untouched
    assert db.execute("SELECT count(*) FROM blocks").fetchone()[0] == writer.length + 2
    db.close()


def test_an_unknown_schema_version_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    Storage.open(tmp_path / "s").close()
    db = sqlite3.connect(tmp_path / "s" / "db.sqlite")
    db.execute("PRAGMA user_version=3")
    db.close()
    with pytest.raises(StorageError, match="schema version 3 is not supported"):
        Storage.open(tmp_path / "s")
    Storage.open(tmp_path / "s2").close()  # and the lock was released on the way out
