"""Real TCP on 127.0.0.1: RPC error codes, a garbage-spewing client next to an honest one,
one connection per remote key, and pool failover when a server process is killed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from autobase_py import crypto
from autobase_py.errors import DecodeError, NotWritableError, RpcError
from autobase_py.net.connection_trio import Connection
from autobase_py.net.endpoint_trio import connect, listen, open_endpoint
from autobase_py.net.rpc import CBOR, CallContext, UnauthorizedError
from autobase_py.net.rpc_trio import (
    RpcClient,
    RpcServer,
    RpcTimeoutError,
    ServerAddress,
    open_rpc_pool,
)

HERE = Path(__file__).resolve().parent
SERVER_KEYS = crypto.key_pair(b"S" * 32)


def registry_like_server() -> RpcServer:
    server = RpcServer()
    allowed = {crypto.key_pair(b"C" * 32).public_key}

    async def put(value: object, context: CallContext) -> object:
        if context.remote_public_key not in allowed:
            raise UnauthorizedError("client key is not on the allow-list")
        if not isinstance(value, dict) or "name" not in value:
            raise DecodeError("put: missing field 'name'")
        return {"ok": value["name"]}

    async def delete(value: object, context: CallContext) -> object:
        raise NotWritableError("this node is a read-only replica")

    async def crash(value: object, context: CallContext) -> object:
        return 1 / 0

    async def hang(value: object, context: CallContext) -> object:
        await trio.sleep_forever()

    async def echo(value: object, context: CallContext) -> object:
        return value

    for name, handler in [("put", put), ("delete", delete), ("crash", crash), ("hang", hang)]:
        server.method(name, handler, request=CBOR, response=CBOR)
    server.method("echo", echo)
    return server


@asynccontextmanager
async def running_server(server: RpcServer) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: listen(
                "127.0.0.1", 0, SERVER_KEYS, protocols=server.protocols, task_status=task_status
            )
        )
        yield port
        nursery.cancel_scope.cancel()


async def test_rpc_errors_arrive_with_the_right_codes_over_tcp() -> None:
    async with running_server(registry_like_server()) as port:
        client_keys = crypto.key_pair(b"C" * 32)
        async with connect(
            "127.0.0.1", port, client_keys, expected_remote_key=SERVER_KEYS.public_key
        ) as conn:
            client = await RpcClient.open(conn)
            call = client.call
            assert await call("put", {"name": "m"}, request=CBOR, response=CBOR) == {"ok": "m"}
            cases = [
                ("nope", b"", "UNKNOWN_METHOD"),
                ("put", {"type": "x"}, "BAD_REQUEST"),
                ("delete", {}, "NOT_WRITABLE"),
                ("crash", {}, "INTERNAL"),
            ]
            for method, value, code in cases:
                with pytest.raises(RpcError) as info:
                    await call(method, value, request=CBOR, response=CBOR)
                assert info.value.code == code, method
            with pytest.raises(RpcTimeoutError) as timeout_info:
                await call("hang", {}, request=CBOR, response=CBOR, call_timeout=0.2)
            assert timeout_info.value.code == "TIMEOUT"
        async with connect("127.0.0.1", port, crypto.key_pair(b"X" * 32)) as conn:
            stranger = await RpcClient.open(conn)
            with pytest.raises(RpcError) as info:
                await stranger.call("put", {"name": "m"}, request=CBOR, response=CBOR)
            assert info.value.code == "UNAUTHORIZED"


async def test_garbage_client_is_dropped_while_an_honest_session_continues() -> None:
    async with running_server(registry_like_server()) as port:
        client_keys = crypto.key_pair(b"C" * 32)
        dropped = trio.Event()
        honest_done = trio.Event()
        rng = random.Random(1)

        async def spew_garbage() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                while True:
                    await stream.send_all(bytes(rng.getrandbits(8) for _ in range(512)))
                    await trio.lowlevel.checkpoint()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                dropped.set()
            finally:
                await stream.aclose()

        async def spew_after_handshake() -> None:
            # Completes a real handshake, then sends an oversized frame header.
            async with connect("127.0.0.1", port, crypto.key_pair(b"G" * 32)) as conn:
                await conn.stream.send_all(b"\xff\xff\xff" + b"\x00" * 100)
                await conn.closed.wait()

        async def honest() -> None:
            async with connect("127.0.0.1", port, client_keys) as conn:
                client = await RpcClient.open(conn)
                for i in range(300):
                    assert await client.call("echo", b"%d" % i) == b"%d" % i
            honest_done.set()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(spew_garbage)
                nursery.start_soon(spew_after_handshake)
                nursery.start_soon(honest)
                await dropped.wait()
                await honest_done.wait()


async def test_endpoints_keep_one_connection_per_remote_key() -> None:
    a_keys, b_keys = crypto.key_pair(b"A" * 32), crypto.key_pair(b"B" * 32)
    async with open_endpoint(a_keys) as a, open_endpoint(b_keys) as b:
        a_port = await a.listen("127.0.0.1")
        b_port = await b.listen("127.0.0.1")
        # Both dial each other at once, and A dials twice.
        conns: list[Connection] = []
        async with trio.open_nursery() as nursery:

            async def dial(src: object, port: int, key: bytes) -> None:
                conns.append(await src.connect("127.0.0.1", port, key))  # type: ignore[attr-defined]

            nursery.start_soon(dial, a, b_port, b_keys.public_key)
            nursery.start_soon(dial, b, a_port, a_keys.public_key)
            nursery.start_soon(dial, a, b_port, None)
        with trio.fail_after(10):
            # A completes three handshakes (two dials, one accept), B three (one, two).
            while a.established < 3:
                await a.wait_changed()
            while b.established < 3:
                await b.wait_changed()
        assert len(conns) == 3
        assert list(a.connections) == [b_keys.public_key]
        assert list(b.connections) == [a_keys.public_key]
        kept = a.connections[b_keys.public_key]
        assert kept.handshake_hash == b.connections[a_keys.public_key].handshake_hash
        assert not kept.is_closed
        # The rule: the connection initiated by the lower key survives.
        lower_initiated = a_keys.public_key < b_keys.public_key
        assert kept.initiator == lower_initiated
        # A later dial reuses it.
        assert await a.connect("127.0.0.1", b_port, b_keys.public_key) is kept


# -- pool failover with real server processes ---------------------------------------------


async def start_server_process(name: str, seed: bytes) -> tuple[trio.Process, ServerAddress]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "_net_server.py"), name, seed.hex()],
        stdin=subprocess.PIPE,  # closed when we go: the child exits
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            if not chunk:
                raise AssertionError(f"server {name} exited early")
            line += chunk
    info = json.loads(line)
    return proc, ServerAddress("127.0.0.1", info["port"], bytes.fromhex(info["key"]))


@pytest.mark.slow
async def test_pool_fails_over_when_a_server_process_is_killed() -> None:
    procs: list[trio.Process] = []
    try:
        one, addr_one = await start_server_process("one", b"1" * 32)
        procs.append(one)
        two, addr_two = await start_server_process("two", b"2" * 32)
        procs.append(two)
        client_keys = crypto.key_pair(b"P" * 32)
        async with open_rpc_pool(
            client_keys, [addr_one, addr_two], rng=random.Random(3), timeout=5.0
        ) as pool:
            seen = {await pool.call("whoami") for _ in range(30)}
            assert seen == {b"one", b"two"}
            one.send_signal(signal.SIGKILL)
            with trio.fail_after(10):
                await one.wait()
            # Every call still succeeds: the pool fails over to the survivor.
            after = [await pool.call("whoami") for _ in range(30)]
            assert set(after) == {b"two"}
            assert pool.choice.servers[0].failures >= 1
            assert await pool.call("echo", b"payload") == b"payload"
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    return port


async def test_pool_skips_unreachable_servers_and_gives_up_after_three_tries() -> None:
    async with running_server(registry_like_server()) as port:
        dead = ServerAddress("127.0.0.1", await closed_port())
        alive = ServerAddress("127.0.0.1", port, SERVER_KEYS.public_key)
        wrong_key = ServerAddress("127.0.0.1", port, crypto.key_pair(b"?" * 32).public_key)
        client_keys = crypto.key_pair(b"C" * 32)
        async with open_rpc_pool(
            client_keys, [dead, wrong_key, alive], rng=random.Random(11)
        ) as pool:
            for _ in range(10):
                assert await pool.call("echo", b"hi") == b"hi"
            assert pool.choice.servers[2].failures == 0
            assert pool.choice.servers[0].failures + pool.choice.servers[1].failures >= 1
        async with open_rpc_pool(client_keys, [dead], rng=random.Random(1)) as pool:
            with pytest.raises(RpcError) as info:
                await pool.call("echo", b"hi")
            assert info.value.code == "CHANNEL_CLOSED"
            assert pool.choice.servers[0].failures == 3  # three tries, each after a backoff
        async with open_rpc_pool(client_keys, [alive]) as pool:
            with pytest.raises(RpcError) as info:
                await pool.call("nope")
            assert info.value.code == "UNKNOWN_METHOD"  # an answer, not a failover case
            assert pool.choice.servers[0].failures == 0


@pytest.mark.slow
async def test_pool_fails_over_when_a_server_process_hangs() -> None:
    procs: list[trio.Process] = []
    try:
        one, addr_one = await start_server_process("one", b"3" * 32)
        procs.append(one)
        two, addr_two = await start_server_process("two", b"4" * 32)
        procs.append(two)
        async with open_rpc_pool(
            crypto.key_pair(b"Q" * 32), [addr_one, addr_two], rng=random.Random(9), timeout=0.5
        ) as pool:
            assert {await pool.call("whoami") for _ in range(20)} == {b"one", b"two"}
            one.send_signal(signal.SIGSTOP)  # alive but silent: only a timeout can tell
            after = [await pool.call("whoami") for _ in range(20)]
            assert set(after) == {b"two"}
            assert pool.choice.servers[0].failures >= 1
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            await proc.wait()
