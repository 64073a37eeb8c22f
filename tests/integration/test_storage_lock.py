"""Two processes on one storage folder: the second gets the clear lock error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from autobase_py.errors import StorageLockedError
from autobase_py.storage import Storage
from autobase_py.store import Store

CHILD = Path(__file__).with_name("_log_child.py")


def start_holder(folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "hold", str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"locked\n"  # wait until the child holds the lock
    return proc


def test_second_process_gets_lock_error_until_the_first_closes(tmp_path: Path) -> None:
    proc = start_holder(tmp_path)
    try:
        with pytest.raises(StorageLockedError) as info:
            Storage.open(tmp_path)
        assert f"process {proc.pid}" in str(info.value)
        with pytest.raises(StorageLockedError):
            Store.open(tmp_path)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the child closes its storage and exits
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    Store.open(tmp_path).close()


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    proc = start_holder(tmp_path)
    with pytest.raises(StorageLockedError):
        Storage.open(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdin:
        proc.stdin.close()
    if proc.stdout:
        proc.stdout.close()
    Storage.open(tmp_path).close()
