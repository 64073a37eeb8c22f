"""Real TCP on 127.0.0.1: RPC error codes, a garbage-spewing client next to an honest one,
one connection per remote key, pool failover when a server process is killed, and dead-peer
detection (a silent peer dropped, an idle pair kept, a replica falling back to a relay when
the link to the writer it follows goes silent)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from autobase_py import crypto
from autobase_py.errors import DecodeError, NotWritableError, RpcError, TimedOutError
from autobase_py.log import Log
from autobase_py.net import replication
from autobase_py.net.connection import Liveness, SecureConnection
from autobase_py.net.connection_trio import Connection
from autobase_py.net.endpoint_trio import connect, listen, open_endpoint
from autobase_py.net.replication_trio import Replicator
from autobase_py.net.rpc import CBOR, CallContext, UnauthorizedError
from autobase_py.net.rpc_trio import (
    RpcClient,
    RpcServer,
    RpcTimeoutError,
    ServerAddress,
    open_rpc_pool,
)
from autobase_py.storage import Storage
from autobase_py.testing.connections import closed_within

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


# -- dead-peer detection ------------------------------------------------------------------

QUICK = Liveness(keepalive_interval=0.1, idle_timeout=0.5)


async def test_a_peer_silent_after_the_handshake_is_dropped() -> None:
    """A raw TCP peer completes the handshake, then never reads or writes again (its socket
    stays open: no FIN, no RST): the connection ends after the idle timeout, with the
    reason, instead of hanging until TCP gives up."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def silent_server() -> None:
                async with await listeners[0].accept() as stream:
                    core = SecureConnection(SERVER_KEYS, initiator=False, now=trio.current_time())
                    while core.result is None:
                        core.receive_data(await stream.receive_some(65536))
                        await stream.send_all(core.data_to_send())
                    await trio.sleep_forever()  # holds the socket open, silent

            nursery.start_soon(silent_server)
            async with connect(
                "127.0.0.1", port, crypto.key_pair(b"C" * 32), liveness=QUICK
            ) as conn:
                start = trio.current_time()
                await conn.closed.wait()
                waited = trio.current_time() - start
                assert isinstance(conn.error, TimedOutError)
                assert "peer silent for 0.5 s" in str(conn.error)
                assert waited >= 0.5
            nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()


async def test_an_idle_pair_stays_connected_over_tcp() -> None:
    """Idle for four idle timeouts: keepalives flow both ways and nobody is dropped."""
    ends: list[Connection] = []
    arrived = trio.Event()

    async def hold(conn: Connection) -> None:
        ends.append(conn)
        arrived.set()
        await conn.closed.wait()

    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: listen(
                "127.0.0.1", 0, SERVER_KEYS, hold, task_status=task_status, liveness=QUICK
            )
        )
        async with connect("127.0.0.1", port, crypto.key_pair(b"C" * 32), liveness=QUICK) as client:
            with trio.fail_after(10):
                await arrived.wait()
            server = ends[0]
            sent = client.core.sent_count, server.core.sent_count
            assert not await closed_within(2.0, client, server)  # four idle timeouts
            assert not client.is_closed and not server.is_closed
            assert client.error is None and server.error is None
            assert client.core.sent_count > sent[0] and server.core.sent_count > sent[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def frozen_proxy(target_port: int) -> AsyncIterator[tuple[int, trio.Event]]:
    """A TCP relay to ``target_port``; once the event is set it stops moving bytes either
    way but keeps both sockets open: a half-open link, as after a pulled cable."""
    frozen = trio.Event()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        while True:
            data = await src.receive_some(65536)
            if frozen.is_set():
                await trio.sleep_forever()
            if not data:
                await dst.send_eof()
                return
            await dst.send_all(data)

    async def relay(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with client, server, trio.open_nursery() as pipes:
            pipes.start_soon(pipe, client, server)
            pipes.start_soon(pipe, server, client)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, relay, listeners))
        yield port, frozen
        nursery.cancel_scope.cancel()


async def test_a_replica_following_over_a_silent_link_falls_back_to_a_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """P follows the writer W (W holds P's follow and pushes each append), and R, a relay,
    follows W too. The link P-W goes silent: while P's follow is held nobody asks a relay
    for W's log's upgrades, so P gets nothing new until the link is dropped; after the idle
    timeout it is, and P completes the log from R."""
    w_keys, r_keys, p_keys = (crypto.key_pair(bytes([n]) * 32) for n in b"WRP")
    source = Log.create(Storage.open_memory(), crypto.key_pair(b"L" * 32))
    source.append([b"block %d" % i for i in range(5)])
    relayed = Log.replica(Storage.open_memory(), source.key)
    replica = Log.replica(Storage.open_memory(), source.key)
    w, r, p = Replicator(logs=[source]), Replicator(logs=[relayed]), Replicator(logs=[replica])
    following = trio.Event()  # P asked W to hold a follow (to R it says "none")
    ask_follow = replication.LogSession._ask_follow

    def asked(session: replication.LogSession) -> bytes:
        if session.log is replica:
            following.set()
        return ask_follow(session)

    monkeypatch.setattr(replication.LogSession, "_ask_follow", asked)
    with trio.fail_after(20):
        async with (
            open_endpoint(w_keys, protocols=w.protocols, on_connection=w.replicate) as ew,
            open_endpoint(r_keys, protocols=r.protocols, on_connection=r.replicate) as er,
            open_endpoint(
                p_keys, protocols=p.protocols, on_connection=p.replicate, liveness=QUICK
            ) as ep,
        ):
            w_port = await ew.listen("127.0.0.1")
            r_port = await er.listen("127.0.0.1")
            async with frozen_proxy(w_port) as (proxy_port, frozen):
                await er.connect("127.0.0.1", w_port, w_keys.public_key)
                to_writer = await ep.connect("127.0.0.1", proxy_port, w_keys.public_key)
                await ep.connect("127.0.0.1", r_port, r_keys.public_key)
                for rep, log in ((r, relayed), (p, replica)):
                    await rep.wait_for(log, lambda lg, rep=rep: lg.length == 5 and rep.complete(lg))
                await following.wait()
                frozen.set()
                source.append([b"block %d" % i for i in range(5, 10)])
                w.announce(source)
                await r.wait_for(relayed, lambda lg: lg.length == 10 and r.complete(lg))
                await to_writer.closed.wait()
                assert replica.length == 5  # stalled behind the held follow until now
                assert isinstance(to_writer.error, TimedOutError)
                await p.wait_for(replica, lambda lg: lg.length == 10 and p.complete(lg))
                assert replica.get(9) == b"block 9"


async def test_a_pool_call_on_a_link_gone_silent_fails_at_the_idle_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pool's connections take its ``liveness``: when the link to a server goes silent
    (a half-open connection) during a call, the call fails once the link is dropped, as a
    lost channel the pool can fail over on, instead of waiting out its own minute."""
    async with (
        running_server(registry_like_server()) as port,
        frozen_proxy(port) as (proxy_port, frozen),
    ):
        via_proxy = ServerAddress("127.0.0.1", proxy_port, SERVER_KEYS.public_key)
        async with open_rpc_pool(
            crypto.key_pair(b"D" * 32), [via_proxy], tries=1, liveness=QUICK
        ) as pool:
            assert await pool.call("echo", b"hi") == b"hi"
            frozen.set()
            with trio.fail_after(10), pytest.raises(RpcError) as info:
                await pool.call("echo", b"lost", call_timeout=60.0)
            assert info.value.code == "CHANNEL_CLOSED"
    assert "peer silent for 0.5 s" in caplog.text  # why the link was dropped
