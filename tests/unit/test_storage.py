"""Storage: the lock, re-entrant transactions with rollback of logs' memory, records."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from autobase_py import crypto
from autobase_py.errors import StorageClosedError, StorageError, StorageLockedError
from autobase_py.log import Log
from autobase_py.storage import Storage


class BoomError(Exception):
    pass


def test_open_creates_folder_and_wal(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "a" / "b") as storage:
        assert (tmp_path / "a" / "b" / "LOCK").exists()
        assert storage.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # NORMAL: commits fsync only when asked (require_sync), see the module header
        assert storage.db.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert storage.closed


def test_commits_fsync_exactly_when_required(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "s") as storage:
        with storage.transaction():
            storage.put(b"k", b"v")
        assert storage.syncs == 0
        with storage.transaction():
            with storage.transaction():
                storage.require_sync()
            storage.put(b"k", b"w")
        assert storage.syncs == 1
        try:
            with storage.transaction():
                storage.require_sync()
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        with storage.transaction():
            storage.put(b"k", b"x")
        assert storage.syncs == 1  # a rolled-back request does not leak into the next commit


def test_fsync_off_skips_requested_syncs_but_not_forced_ones(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "s", fsync=False) as storage:
        log = Log.create(storage, crypto.key_pair(bytes(32)))
        log.append([b"a"])
        assert storage.syncs == 0
        with storage.transaction():
            storage.require_sync(force=True)
            storage.put(b"k", b"v")
        assert storage.syncs == 1
    with Storage.open(tmp_path / "s") as again:  # the data is there all the same
        assert Log.create(again, crypto.key_pair(bytes(32))).get(0) == b"a"
        assert again.get(b"k") == b"v"


def test_signed_appends_are_durable_but_a_view_may_opt_out(tmp_path: Path) -> None:
    from autobase_py.store import Store

    with Store.open(tmp_path / "s") as store:
        storage = store.storage
        before = storage.syncs
        oplog = store.get(name="oplog")
        oplog.append([b"a"])
        assert storage.syncs == before + 1
        view = store.get(name="view")
        view.durable_appends = False
        view.append([b"b"])
        view.truncate(0)
        assert storage.syncs == before + 1


def test_second_open_in_one_process_is_locked(tmp_path: Path) -> None:
    first = Storage.open(tmp_path)
    with pytest.raises(StorageLockedError) as info:
        Storage.open(tmp_path)
    assert "in use" in str(info.value) and info.value.code == "STORAGE_LOCKED"
    first.close()
    Storage.open(tmp_path).close()  # released on close


def test_closed_storage_raises(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path)
    storage.close()
    storage.close()  # idempotent
    with pytest.raises(StorageClosedError):
        storage.get(b"x")


def test_records_crud_and_prefix_iteration(tmp_path: Path) -> None:
    with Storage.open(tmp_path) as s:
        assert s.get(b"k") is None
        for key in [b"a/1", b"a/2", b"a\xff", b"a\xff\xff", b"b", b"a"]:
            s.put(key, key + b"!")
        assert s.get(b"a/1") == b"a/1!"
        assert [k for k, _ in s.iterate(b"a/")] == [b"a/1", b"a/2"]
        assert [k for k, _ in s.iterate(b"a")] == [b"a", b"a/1", b"a/2", b"a\xff", b"a\xff\xff"]
        assert [k for k, _ in s.iterate(b"a\xff")] == [b"a\xff", b"a\xff\xff"]
        assert [k for k, _ in s.iterate(b"a/", reverse=True)] == [b"a/2", b"a/1"]
        assert len(s.iterate()) == 6
        s.put(b"a/1", b"new")
        assert s.get(b"a/1") == b"new"
        s.delete(b"a/1")
        assert s.get(b"a/1") is None
        s.delete_prefix(b"a")
        assert [k for k, _ in s.iterate()] == [b"b"]


def test_outer_rollback_undoes_records_and_log_memory(tmp_path: Path) -> None:
    s = Storage.open(tmp_path)
    log = Log.create(s, crypto.key_pair(bytes(32)))
    log.append([b"kept"])
    signature = log.signature
    with pytest.raises(BoomError), s.transaction():
        log.append([b"gone", b"too"])
        s.put(b"r", b"v")
        assert log.length == 3 and s.get(b"r") == b"v"
        raise BoomError
    assert (log.length, log.signature, s.get(b"r")) == (1, signature, None)
    assert not log.has(1)
    assert log.append([b"after"]) == 2 and log.get(1) == b"after"


def test_inner_level_rolls_back_alone(tmp_path: Path) -> None:
    s = Storage.open(tmp_path)
    log = Log.create(s, crypto.key_pair(bytes(32)))
    with s.transaction():
        log.append([b"a"])
        s.put(b"outer", b"1")
        with pytest.raises(BoomError), s.transaction():
            log.append([b"b"])
            s.put(b"inner", b"2")
            raise BoomError
        assert log.length == 1 and s.get(b"inner") is None
        log.append([b"c"])
    assert [log.get(i) for i in range(log.length)] == [b"a", b"c"]
    s.close()
    s = Storage.open(tmp_path)
    again = Log.create(s, crypto.key_pair(bytes(32)))
    assert again.length == 2 and s.get(b"outer") == b"1" and s.get(b"inner") is None


def test_flat_transaction_uses_no_savepoints_and_commits_whole(tmp_path: Path) -> None:
    s = Storage.open(tmp_path)
    log = Log.create(s, crypto.key_pair(bytes(32)))
    statements: list[str] = []
    s.db.set_trace_callback(statements.append)
    with s.transaction(flat=True):
        log.append([b"a"])
        with s.transaction():
            s.put(b"inner", b"1")
        log.append([b"b"])
    s.db.set_trace_callback(None)
    assert not [q for q in statements if "SAVEPOINT" in q or "RELEASE" in q]
    assert log.length == 2 and s.get(b"inner") == b"1"
    with s.transaction():  # the next transaction is an ordinary one again
        s.put(b"kept", b"y")
        with pytest.raises(BoomError), s.transaction():
            s.put(b"gone", b"x")
            raise BoomError
    assert s.get(b"gone") is None and s.get(b"kept") == b"y"


def test_flat_transaction_caught_inner_failure_rolls_everything_back(tmp_path: Path) -> None:
    s = Storage.open(tmp_path)
    log = Log.create(s, crypto.key_pair(bytes(32)))
    log.append([b"kept"])
    with pytest.raises(StorageError, match="flat transaction"), s.transaction(flat=True):
        s.put(b"outer", b"1")
        with pytest.raises(BoomError), s.transaction():
            log.append([b"half"])
            raise BoomError
        s.put(b"after", b"2")  # the caller carried on: the commit must refuse
    assert log.length == 1 and log.get(0) == b"kept"
    assert s.get(b"outer") is None and s.get(b"after") is None
    assert log.append([b"next"]) == 2  # storage and log memory are usable afterwards


def test_call_when_idle_runs_after_the_outermost_commit_or_rollback(tmp_path: Path) -> None:
    s = Storage.open(tmp_path)
    calls: list[str] = []
    s.call_when_idle(lambda: calls.append("now"))
    assert calls == ["now"]  # nothing open: at once
    with s.transaction():
        s.call_when_idle(lambda: calls.append("after commit"))
        with s.transaction():
            s.put(b"k", b"v")
        assert calls == ["now"]  # an inner level ending is not the end
    assert calls == ["now", "after commit"]
    with pytest.raises(BoomError), s.transaction(flat=True):
        s.call_when_idle(lambda: calls.append("after rollback"))
        raise BoomError
    assert calls[-1] == "after rollback" and s.get(b"k") == b"v"
    s.close()


def test_many_logs_commit_together(tmp_path: Path) -> None:
    s = Storage.open(tmp_path)
    logs = [Log.create(s, crypto.key_pair(bytes([i]) * 32)) for i in range(3)]
    with s.transaction():
        for i, log in enumerate(logs):
            log.append([b"x"] * (i + 1))
        s.put(b"state", b"3 logs")
        assert s.in_transaction
    assert not s.in_transaction
    s.close()
    s = Storage.open(tmp_path)
    assert [Log.create(s, crypto.key_pair(bytes([i]) * 32)).length for i in range(3)] == [1, 2, 3]
    assert s.get(b"state") == b"3 logs"


def test_sqlite_errors_become_storage_errors(tmp_path: Path) -> None:
    s = Storage.open(tmp_path)
    with pytest.raises(StorageError), s.transaction():
        s.db.execute("INSERT INTO no_such_table VALUES (1)")
    assert not s.in_transaction
    s.put(b"still", b"works")
    assert s.get(b"still") == b"works"


def test_log_created_in_a_rolled_back_transaction_still_works(tmp_path: Path) -> None:
    s = Storage.open(tmp_path)
    with pytest.raises(BoomError), s.transaction():
        log = Log.create(s, crypto.key_pair(bytes(32)))
        log.append([b"gone"])
        raise BoomError
    assert log.length == 0
    assert log.append([b"kept"]) == 1
    s.close()
    s = Storage.open(tmp_path)
    assert Log.create(s, crypto.key_pair(bytes(32))).get(0) == b"kept"


def test_bytes_and_none_parameters_bind_unchanged_through_the_identity_adapters() -> None:
    """Storage registers identity adapters for bytes and None (they spare sqlite3 a failed
    attribute lookup per parameter); values must reach SQLite exactly as given."""
    for value in (b"", b"\x00abc", bytes(range(256))):
        assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)](value) is value
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)](None) is None
    s = Storage.open_memory()
    row = s.db.execute("SELECT ?, typeof(?), typeof(?), ?", (b"\x00x", b"", None, None))
    assert row.fetchone() == (b"\x00x", "blob", "null", None)
    s.put(b"\xffkey", b"\x00value")
    assert s.get(b"\xffkey") == b"\x00value"
    assert s.iterate(b"\xff") == [(b"\xffkey", b"\x00value")]
