"""kill -9 a process that appends to a base, at random moments, and reopen it each time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from autobase_py.base.core import Autobase
from autobase_py.bee import Bee
from autobase_py.store import Store
from autobase_py.testing import kv
from autobase_py.testing.sync import converge

CHILD = Path(__file__).with_name("_base_child.py")
ROUNDS = 6


def run_child_until_killed(path: Path, start: int, rng: random.Random) -> int:
    """Start the child, let it ack a random number of appends, SIGKILL it; return last acked."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(start)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    last = start - 1
    target = rng.randint(3, 40)
    seen = 0
    try:
        for line in proc.stdout:
            if line.startswith("acked"):
                last = int(line.split()[1])
                seen += 1
                if seen >= target:
                    # kill somewhere inside the next cycles, not at a quiet point
                    time.sleep(rng.random() * 0.01)
                    break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return last


async def test_kill_9_loses_nothing_acknowledged_and_reopens_without_replay(
    tmp_path: Path,
) -> None:
    rng = random.Random(1234)
    path = tmp_path / "node"
    acked: list[int] = []
    for round_ in range(ROUNDS):
        start = round_ * 10_000  # values a killed round left unacknowledged never collide
        last = run_child_until_killed(path, start, rng)
        acked.extend(range(start, last + 1))
        store = Store.open(path)
        try:
            base: Autobase[Bee] = await Autobase.open(
                store, apply=kv.apply, open_view=kv.open_view
            )
            # nothing acknowledged is lost, in this round or any earlier one
            for i in acked:
                assert await kv.get(base.view, b"k%d" % i) == b"v%d" % i
            assert base.unconfirmed_values == 0
            # the view equals a fresh replay of the persisted order
            fresh_store = Store.open(tmp_path / f"fresh{round_}")
            try:
                fresh: Autobase[Bee] = await Autobase.open(
                    fresh_store, base.key, apply=kv.apply, open_view=kv.open_view
                )
                await converge([base, fresh])
                assert fresh.view_log.tree_hash() == base.view_log.tree_hash()
                assert await kv.journal(fresh.view) == await kv.journal(base.view)
            finally:
                fresh_store.close()
            # and the base continues
            await base.append(kv.note(f"reopened after {last}"))
            await base.close()
        finally:
            store.close()
