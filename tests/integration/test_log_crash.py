"""kill -9 a real process appending to a log: nothing acknowledged is lost, nothing is torn."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from autobase_py import crypto
from autobase_py.log import Node, flat_tree, leaf_hash, parent_hash, tree_hash
from autobase_py.store import Store

CHILD = Path(__file__).with_name("_log_child.py")
sys.path.insert(0, str(CHILD.parent))
from _log_child import block  # noqa: E402


def recomputed_tree_hash(blocks: list[bytes]) -> bytes:
    def node(index: int) -> Node:
        kids = flat_tree.children(index)
        if kids is None:
            data = blocks[index // 2]
            return Node(index, len(data), leaf_hash(data))
        left, right = node(kids[0]), node(kids[1])
        return Node(index, left.size + right.size, parent_hash(left, right))

    return tree_hash([node(r) for r in flat_tree.full_roots(len(blocks))])


def check_folder(folder: Path, acknowledged: int) -> int:
    """Reopen, verify everything against the stored signature, append once more."""
    store = Store.open(folder)
    try:
        log = store.get(name="crash")
        assert log.length >= acknowledged, (log.length, acknowledged)
        print(f"reopened: length {log.length}, acknowledged {acknowledged}")
        blocks = [log.get(i) for i in range(log.length)]
        assert blocks == [block(i) for i in range(log.length)]
        assert log.tree_hash() == recomputed_tree_hash(blocks)
        assert log.manifest is not None and log.signature is not None
        assert crypto.verify(log.signable(), log.signature, log.manifest.public_key)
        # the record written in the same transaction never disagrees with the log
        assert store.storage.get(b"test/acked") == b"%d" % log.length
        with store.storage.transaction():
            length = log.append([block(log.length)])
            store.storage.put(b"test/acked", b"%d" % length)
        return length
    finally:
        store.close()


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"crash test seed {seed}")
    folder = tmp_path / "store"
    acknowledged = 0
    for _ in range(12):
        batch = rng.choice([1, 1, 3, 10, 40])
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), "append", str(folder), str(batch)],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        for _ in range(rng.randint(1, 40)):  # let it acknowledge a random number of appends
            line = proc.stdout.readline()
            assert line, "child died before acknowledging"
            acknowledged = max(acknowledged, int(line))
        os.kill(proc.pid, signal.SIGKILL)  # while it keeps appending: a random moment
        rest = proc.stdout.read()
        proc.wait()
        proc.stdout.close()
        complete = rest.split(b"\n")[:-1]  # a torn last line (no newline) was not an ack
        if complete:
            acknowledged = max(acknowledged, int(complete[-1]))
        assert proc.returncode == -signal.SIGKILL
        acknowledged = check_folder(folder, acknowledged)
