"""Bases in separate processes replicating over TCP on 127.0.0.1 converge: the same order
applied (journals), byte-identical views (view tree hashes), whatever the timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from autobase_py.testing import kv

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


class BaseNode:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.buffer = b""
        self.info: dict[str, Any] = {}

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError("node exited")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(raw)
        return result

    async def ask(self, *pairs: str, **command: Any) -> dict[str, Any]:
        command.update(zip(pairs[::2], pairs[1::2], strict=True))
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(json.dumps(command).encode() + b"\n")
        return await self.line()

    async def append(self, value: bytes) -> None:
        await self.ask(op="append", value=value.hex())


async def start(tmp: Path, name: str, *extra: str) -> BaseNode:
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "_net_base.py"), "--storage", str(tmp / name), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    node = BaseNode(proc)
    node.info = await node.line()
    return node


async def settle(nodes: list[BaseNode]) -> list[dict[str, Any]]:
    """Until every node holds every log at the same length (acks included) and agrees."""
    while True:
        states = [await node.ask(op="state") for node in nodes]
        target: dict[str, int] = {}
        for state in states:
            for key, length in state["lengths"].items():
                target[key] = max(target.get(key, 0), length)
        states = [await node.ask(op="wait-lengths", lengths=target) for node in nodes]
        if all(s["lengths"] == states[0]["lengths"] for s in states) and all(
            s["lengths"] == {k: target[k] for k in s["lengths"]} for s in states
        ):
            return states


async def test_three_bases_in_three_processes_converge(tmp_path: Path) -> None:
    nodes: list[BaseNode] = []
    try:
        with trio.fail_after(120):
            a = await start(tmp_path, "a")
            nodes.append(a)
            peer = ["--bootstrap", a.info["key"], "--peer", f"127.0.0.1:{a.info['port']}"]
            b = await start(tmp_path, "b", *peer)
            nodes.append(b)
            c = await start(tmp_path, "c", *peer)  # knows only a: b's oplog reaches it via a
            nodes.append(c)
            await a.append(kv.add_writer(bytes.fromhex(b.info["local"]), indexer=True))
            await a.append(kv.add_writer(bytes.fromhex(c.info["local"]), indexer=False))
            assert await b.ask(op="wait-writable") == {"writable": True}
            assert await c.ask(op="wait-writable") == {"writable": True}
            for i in range(10):  # concurrent writers, interleaved as they happen
                await a.append(kv.put(b"a%d" % i, b"from a"))
                await b.append(kv.put(b"b%d" % i, b"from b"))
                await c.append(kv.put(b"c%d" % i, b"from c"))
            async with trio.open_nursery() as flushing:  # every value gets confirmed
                for node in nodes:
                    flushing.start_soon(node.ask, "op", "flush")
            states = await settle(nodes)
            # idle indexers publish their checkpoint signatures; every node then holds a
            # certificate for its newest checkpoint, the same one everywhere
            signed = [await node.ask(op="wait-certified") for node in nodes]
            assert len({s["signed"] for s in signed}) == 1 and signed[0]["signed"] > 0
        journals = [s["journal"] for s in states]
        assert journals[0] == journals[1] == journals[2]
        values = {bytes.fromhex(v) for v in journals[0]}
        for i in range(10):
            for who in (b"a", b"b", b"c"):
                assert kv.put(who + b"%d" % i, b"from " + who) in values
        assert len({s["view"] for s in states}) == 1  # byte-identical views
        assert len({(s["applied"], s["confirmed"]) for s in states}) == 1
    finally:
        for node in nodes:
            if node.proc.returncode is None:
                node.proc.kill()
            await node.proc.wait()
