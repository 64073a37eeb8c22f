"""Replication between real processes over TCP on 127.0.0.1: two and three nodes with 10,000
blocks, a live writer followed by a replica (wire versions 4 and 3 mixed), a tampering peer
(every proof, or only block values in range answers), and garbage clients next to an honest
replication."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

HERE = Path(__file__).resolve().parent
BLOCKS = 10_000
pytestmark = pytest.mark.slow


def expected_digest(n: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    for i in range(n):
        h.update(b"block %d" % i)
    return h.hexdigest()


class Node:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buffer = b""
        self.info: dict[str, Any] = {}

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError("node exited")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(raw)
        return result

    async def until(self, field: str) -> dict[str, Any]:
        while True:
            message = await self.line()
            if field in message:
                return message

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.info['port']}"


@asynccontextmanager
async def nodes() -> AsyncIterator[Any]:
    started: list[Node] = []

    async def start(*args: str) -> Node:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(HERE / "_net_replica.py"), *args],
            stdin=subprocess.PIPE,  # closed when we go: the child exits
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        node = Node(proc)
        started.append(node)
        node.info = await node.until("port")
        return node

    try:
        yield start
    finally:
        for node in started:
            if node.proc.returncode is None:
                node.proc.kill()
            await node.proc.wait()


async def test_two_processes_replicate_10000_blocks_despite_garbage_clients(
    tmp_path: Path,
) -> None:
    async with nodes() as start:
        with trio.fail_after(120):
            writer = await start("--storage", str(tmp_path / "w"), "--write", str(BLOCKS))
            spewing = trio.Event()

            async def spew_garbage() -> None:
                rng = random.Random(5)
                for _ in range(20):  # twenty garbage clients, one after another
                    stream = await trio.open_tcp_stream("127.0.0.1", writer.info["port"])
                    try:
                        while True:
                            await stream.send_all(bytes(rng.getrandbits(8) for _ in range(256)))
                            spewing.set()
                            await trio.lowlevel.checkpoint()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # dropped by the writer, as it should be
                    finally:
                        await stream.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(spew_garbage)
                await spewing.wait()
                replica = await start(
                    "--storage", str(tmp_path / "r"),
                    "--log", writer.info["log"],
                    "--expect", str(BLOCKS),
                    "--connect", writer.address,
                )
                done = await replica.until("done")
            assert done == {"done": BLOCKS, "digest": expected_digest(BLOCKS)}


@pytest.mark.parametrize(("writer_version", "replica_version"), [(4, 4), (3, 4), (4, 3)])
async def test_a_replica_follows_a_live_writer_in_another_process(
    tmp_path: Path, writer_version: int, replica_version: int
) -> None:
    # The writer appends one block at a time once the replica is connected: version 4 on both
    # ends follows it with tips; a version-3 end on either side still replicates it (sync,
    # request, ranges), nobody dropped as malformed.
    async with nodes() as start:
        with trio.fail_after(120):
            writer = await start(
                "--storage", str(tmp_path / "w"), "--write", "1000", "--live", "300",
                "--wire-version", str(writer_version),
            )
            replica = await start(
                "--storage", str(tmp_path / "r"), "--log", writer.info["log"],
                "--expect", "1300", "--connect", writer.address,
                "--wire-version", str(replica_version),
            )
            assert await replica.until("done") == {"done": 1300, "digest": expected_digest(1300)}


async def test_three_processes_in_a_chain(tmp_path: Path) -> None:
    async with nodes() as start:
        with trio.fail_after(120):
            writer = await start("--storage", str(tmp_path / "w"), "--write", str(BLOCKS))
            common = ["--log", writer.info["log"], "--expect", str(BLOCKS)]
            middle = await start(
                "--storage", str(tmp_path / "m"), *common, "--connect", writer.address
            )
            # The last node knows only the middle one: everything it gets is relayed.
            last = await start(
                "--storage", str(tmp_path / "l"), *common, "--connect", middle.address
            )
            want = {"done": BLOCKS, "digest": expected_digest(BLOCKS)}
            assert await middle.until("done") == want
            assert await last.until("done") == want


@pytest.mark.parametrize("tamper", ["--tamper", "--tamper-blocks"])
async def test_a_tampering_peer_is_dropped_and_honest_data_wins(
    tmp_path: Path, tamper: str
) -> None:
    async with nodes() as start:
        with trio.fail_after(120):
            writer = await start("--storage", str(tmp_path / "w"), "--write", "500")
            common = ["--log", writer.info["log"], "--expect", "500"]
            liar = await start(
                "--storage", str(tmp_path / "t"), *common, "--connect", writer.address, tamper
            )
            await liar.until("done")  # it holds the real data, and lies about it
            victim = await start(
                "--storage", str(tmp_path / "v"), *common,
                "--connect", liar.address, "--later", writer.address,
            )
            closed = await victim.until("closed")
            assert closed == {"closed": liar.address, "error": "INVALID_PEER_DATA"}
            assert await victim.until("done") == {"done": 500, "digest": expected_digest(500)}
