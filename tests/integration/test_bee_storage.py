"""The bee on real storage: reopening a folder, and SIGKILL of a process in the middle of
flushing (the tree then reads exactly what the last committed flush wrote)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from autobase_py.bee import Bee, SnapshotExpiredError
from autobase_py.store import Store

CHILD = Path(__file__).with_name("_bee_child.py")
sys.path.insert(0, str(CHILD.parent))
from _bee_child import SEED, model_after  # noqa: E402


async def content(bee: Bee) -> dict[bytes, bytes]:
    return {key: value async for key, value in bee.range()}


async def test_reopen_after_flush_reads_what_was_flushed(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", primary_seed=SEED)
    bee = Bee(store.get(name="view"), leaf_max=8, internal_max=8)
    batch = bee.batch()
    for i in range(500):
        batch.put(b"k%04d" % i, b"v%d" % i)
    version = await batch.flush()
    unflushed = bee.batch()
    unflushed.put(b"never", b"flushed")
    assert await unflushed.get(b"never") == b"flushed"
    store.close()

    store = Store.open(tmp_path / "s", primary_seed=SEED)
    try:
        bee = Bee(store.get(name="view"))
        assert bee.version == version
        assert await content(bee) == {b"k%04d" % i: b"v%d" % i for i in range(500)}
        assert await bee.get(b"never") is None
        await bee.delete(b"k0007")  # and it keeps working on top of what it found
        assert await bee.get(b"k0007") is None
    finally:
        store.close()


def run_child_and_kill(folder: Path, after: int) -> int:
    """Start the writer, SIGKILL it once it has acknowledged ``after`` flushes (it is busy
    with the next one by then); return the number of acknowledged flushes."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acknowledged = int(line.split()[1])
            if acknowledged >= after:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err
    return acknowledged


def test_sigkill_mid_flush_leaves_exactly_a_flushed_tree(tmp_path: Path) -> None:
    folder = tmp_path / "crash"
    for after in (3, 11, 25):
        acknowledged = run_child_and_kill(folder, after)
        store = Store.open(folder, primary_seed=SEED)
        try:
            bee = Bee(store.get(name="view"))
            found = trio.run(content, bee)
            # The flush in progress when the kill landed either committed whole or not at all.
            candidates = [model_after(acknowledged), model_after(acknowledged + 1)]
            assert found in candidates, f"torn or lost tree after {acknowledged} acked flushes"
            # The next child counts its flushes from 0 again: give it an empty view.
            store.get(name="view").truncate(0)
        finally:
            store.close()


@pytest.mark.parametrize("pack_bytes", [1, 16384])  # a node per block / packed flushes
async def test_rolled_back_transaction_leaves_no_stale_nodes(
    tmp_path: Path, pack_bytes: int
) -> None:
    """Appends undone by a rolled-back storage transaction keep the fork; the bee still
    must not serve the nodes it cached from them once those indexes are rewritten."""
    store = Store.open(tmp_path / "s", primary_seed=SEED)
    try:
        log = store.get(name="view")
        bee = Bee(log, leaf_max=4, internal_max=4, pack_bytes=pack_bytes)
        for i in range(30):
            await bee.put(b"k%02d" % i, b"committed")
        version, fork = bee.version, log.fork
        snap = bee.snapshot()
        try:
            with store.storage.transaction():
                await bee.put(b"k05", b"rolled back")
                await bee.put(b"zz", b"rolled back")
                inner = bee.snapshot()
                assert await bee.get(b"k05") == b"rolled back"
                raise RuntimeError("abort the apply cycle")
        except RuntimeError:
            pass
        assert (log.length, log.fork) == (version, fork)
        assert await bee.get(b"k05") == b"committed"
        assert await bee.get(b"zz") is None
        with pytest.raises(SnapshotExpiredError):
            await inner.get(b"k05")
        # Rewrite the same block indexes with other content, through another bee on the log
        # (so the first bee's cache is not simply overwritten by its own flushes).
        other = Bee(log, leaf_max=4, internal_max=4, pack_bytes=pack_bytes)
        await other.put(b"k06", b"new")
        await other.put(b"aa", b"new")
        await other.put(b"ab", b"new")
        assert log.length >= version + 3  # covers every index the rolled-back appends used
        assert await bee.get(b"k05") == b"committed"
        assert await bee.get(b"zz") is None
        assert await bee.get(b"aa") == b"new"
        assert await snap.get(b"k06") == b"committed"
        assert len({k async for k, _ in bee.range()}) == 32
    finally:
        store.close()
