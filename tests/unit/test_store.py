"""Store: named writable logs from a primary seed, replicas by key, reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from autobase_py import crypto
from autobase_py.errors import InvalidKeyError, LocalError, StorageClosedError
from autobase_py.store import Store


def test_named_logs_are_writable_and_stable(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    view = store.get(name="view")
    assert view.writable and view is store.get(name="view")
    assert store.get(name="other").key != view.key
    view.append([b"a", b"b"])
    key = view.key
    assert store.get(key=key) is view
    store.close()

    again = Store.open(tmp_path)
    reopened = again.get(name="view")
    assert reopened.key == key and reopened.length == 2 and reopened.get(1) == b"b"
    again.close()
    third = Store.open(tmp_path)
    first = third.get(key=key)  # opened by key before by name: still the writable log
    assert first.writable and first is third.get(name="view")
    third.close()


def test_replica_by_key_and_persistence(tmp_path: Path) -> None:
    source = Store.open(tmp_path / "src")
    log = source.get(name="w")
    log.append([b"x", b"y", b"z"])
    dest = Store.open(tmp_path / "dst")
    replica = dest.get(key=log.key)
    assert not replica.writable and replica is dest.get(key=log.key)
    replica.apply_proof(log.proof(2, upgrade_from=0))
    assert log.key in dest.log_keys()
    dest.close()
    dest = Store.open(tmp_path / "dst")
    replica = dest.get(key=log.key)
    assert (replica.length, replica.get(2), replica.has(0)) == (3, b"z", False)
    assert replica.manifest == log.manifest


def test_primary_seed_is_kept_and_checked(tmp_path: Path) -> None:
    seed = bytes(range(32))
    store = Store.open(tmp_path, primary_seed=seed)
    key = store.get(name="view").key
    store.close()
    assert Store.open(tmp_path / "other", primary_seed=seed).get(name="view").key == key
    with pytest.raises(LocalError):
        Store.open(tmp_path, primary_seed=bytes(32))
    with Store.open(tmp_path) as store:  # the failed open released the lock
        assert store.get(name="view").key == key
    with pytest.raises(InvalidKeyError):
        Store.open(tmp_path / "x", primary_seed=b"short")


def test_get_arguments(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    with pytest.raises(LocalError):
        store.get()
    with pytest.raises(LocalError):
        store.get(name="a", key=bytes(32))
    with pytest.raises(InvalidKeyError):
        store.get(key=b"short")
    with pytest.raises(LocalError):
        store.get(name="")
    pair = crypto.key_pair(bytes(32))
    replica = store.get(key=store.get(key_pair=pair).key)
    assert replica.writable
    store.close()
    with pytest.raises(StorageClosedError):
        store.get(name="view")


def test_replica_then_key_pair_upgrades_the_same_object(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    pair = crypto.key_pair(bytes([9]) * 32)
    other = Store.open(tmp_path / "o")
    key = other.get(key_pair=pair).key
    replica = store.get(key=key)
    assert not replica.writable
    writable = store.get(key_pair=pair)
    assert writable is replica and replica.writable
    replica.append([b"now writable"])
    assert replica.manifest is not None and replica.length == 1
