"""The trio adapters over trio.testing memory streams (no sockets), timeouts on a MockClock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from autobase_py import crypto
from autobase_py.errors import (
    ChannelClosedError,
    HandshakeError,
    LocalError,
    NotWritableError,
    ProtocolError,
    RpcError,
    TimedOutError,
)
from autobase_py.net.connection import (
    DEFAULT_LIVENESS,
    LIVENESS_OFF,
    Liveness,
    SecureConnection,
)
from autobase_py.net.connection_trio import Channel, ChannelHandler, Connection, open_connection
from autobase_py.net.framing import encode_frame
from autobase_py.net.rpc import CBOR, CallContext, UnauthorizedError
from autobase_py.net.rpc_trio import RpcChannelClosedError, RpcClient, RpcServer, RpcTimeoutError
from autobase_py.testing.connections import closed_within

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


class Dribble(trio.abc.Stream):
    """Hands received bytes to the reader one byte per ``receive_some`` call."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.buffer = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self.buffer:
            self.buffer = bytes(await self.inner.receive_some())
        out, self.buffer = self.buffer[:1], self.buffer[1:]
        return out

    async def aclose(self) -> None:
        await self.inner.aclose()


def dribble_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    left, right = trio.testing.memory_stream_pair()
    return Dribble(left), Dribble(right)


PAIRS: list[StreamPair] = [
    trio.testing.memory_stream_pair,
    trio.testing.lockstep_stream_pair,
    dribble_pair,
]
CLIENT, SERVER = crypto.key_pair(b"c" * 32), crypto.key_pair(b"s" * 32)


@asynccontextmanager
async def connected(
    make_pair: StreamPair = trio.testing.memory_stream_pair,
    server_protocols: Mapping[str, ChannelHandler] | None = None,
    client_protocols: Mapping[str, ChannelHandler] | None = None,
    server_liveness: Liveness | None = None,
    liveness: Liveness = DEFAULT_LIVENESS,
) -> AsyncIterator[tuple[Connection, Connection]]:
    left, right = make_pair()
    done = trio.Event()

    async def serve(task_status: trio.TaskStatus[Connection]) -> None:
        async with open_connection(
            right,
            SERVER,
            initiator=False,
            protocols=server_protocols,
            liveness=liveness if server_liveness is None else server_liveness,
        ) as conn:
            task_status.started(conn)
            await done.wait()

    async with trio.open_nursery() as nursery:
        server_conn_box: list[Connection] = []

        async def start_server() -> None:
            server_conn_box.append(await nursery.start(serve))

        nursery.start_soon(start_server)
        async with open_connection(
            left,
            CLIENT,
            initiator=True,
            expected_remote_key=SERVER.public_key,
            protocols=client_protocols,
            liveness=liveness,
        ) as client:
            while not server_conn_box:
                await trio.testing.wait_all_tasks_blocked()
            yield client, server_conn_box[0]
        done.set()


async def echo(channel: Channel) -> None:
    async for message in channel:
        await channel.send(message[::-1])


@pytest.mark.parametrize("make_pair", PAIRS)
async def test_channels_over_memory_streams(make_pair: StreamPair) -> None:
    async with connected(make_pair, {"echo": echo}) as (client, server):
        assert client.remote_public_key == SERVER.public_key
        assert server.remote_public_key == CLIENT.public_key
        assert client.handshake_hash == server.handshake_hash
        one = await client.open_channel(("echo", b"1"), b"hi")
        two = await client.open_channel(("echo", b"2"))
        await one.send(b"abc")
        await two.send(b"xyz")
        assert await one.receive() == b"cba"
        assert await two.receive() == b"zyx"
        with pytest.raises(LocalError):
            await client.open_channel(("echo", b"1"))
        await one.aclose()
        with pytest.raises(ChannelClosedError):
            await one.send(b"late")
        await two.send(b"still")
        assert await two.receive() == b"llits"


async def test_send_many_keeps_order_and_fails_on_a_closed_channel() -> None:
    async with connected(server_protocols={"echo": echo}) as (client, _):
        channel = await client.open_channel(("echo", b"m"))
        await channel.send_many([])
        await channel.send_many([b"%d" % i for i in range(50)])
        assert [await channel.receive() for _ in range(50)] == [
            (b"%d" % i)[::-1] for i in range(50)
        ]
        await channel.aclose()
        with pytest.raises(ChannelClosedError):
            await channel.send_many([b"late"])


async def test_unknown_protocol_is_refused_and_connection_survives() -> None:
    async with connected(server_protocols={"echo": echo}) as (client, _):
        with pytest.raises(ChannelClosedError):
            await client.open_channel(("nope", b""))
        channel = await client.open_channel(("echo", b""))
        await channel.send(b"ok")
        assert await channel.receive() == b"ko"


@asynccontextmanager
async def sink_server() -> AsyncIterator[tuple[trio.abc.Stream, list[bytes], trio.Event]]:
    """A server whose "sink" protocol keeps every message of its channel; yields (the stream
    to open a client connection on, the messages received, set when the sink's channel
    ended)."""
    received: list[bytes] = []
    finished = trio.Event()

    async def sink(channel: Channel) -> None:
        async for message in channel:
            received.append(message)
        finished.set()

    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            protocols = {"sink": sink}
            async with open_connection(right, SERVER, initiator=False, protocols=protocols) as c:
                await c.closed.wait()

        nursery.start_soon(serve)
        yield left, received, finished


async def test_graceful_close_drains_everything_sent_before_it() -> None:
    async with sink_server() as (stream, received, finished):
        async with open_connection(stream, CLIENT, initiator=True) as client:
            channel = await client.open_channel(("sink", b""))
            for i in range(200):
                await channel.send(b"%d" % i)
        # Leaving the block closed the connection gracefully.
        await finished.wait()
    assert received == [b"%d" % i for i in range(200)]


async def test_a_final_that_arrives_with_everything_still_lets_the_handler_consume_it() -> None:
    # The client queues every message and closes without yielding in between: the peer reads
    # them and the FINAL at once, and its handler still gets them all before it is stopped.
    async with sink_server() as (stream, received, finished):
        async with open_connection(stream, CLIENT, initiator=True) as client:
            channel = await client.open_channel(("sink", b""))
            channel.send_now([b"%d" % i for i in range(300)])
        with trio.fail_after(10):
            await finished.wait()
    assert received == [b"%d" % i for i in range(300)]


class CountingStream(trio.abc.Stream):
    """Counts the ``send_all`` calls (socket writes) made on it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def counted_sink() -> AsyncIterator[tuple[Connection, Channel, CountingStream, list[bytes]]]:
    """A client connection whose socket writes are counted, and a channel to a server that
    keeps every message."""
    received: list[bytes] = []
    streams: list[CountingStream] = []

    async def sink(channel: Channel) -> None:
        async for message in channel:
            received.append(message)

    def pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        left, right = trio.testing.memory_stream_pair()
        streams.append(CountingStream(left))
        return streams[0], right

    async with connected(pair, {"sink": sink}) as (client, _):
        channel = await client.open_channel(("sink", b""))
        await trio.testing.wait_all_tasks_blocked()
        yield client, channel, streams[0], received


async def test_deferred_calls_run_right_before_the_write_and_share_it() -> None:
    async with counted_sink() as (client, channel, stream, received):
        before = stream.writes
        calls: list[int] = []

        def news() -> None:
            calls.append(len(received))
            channel.send_now([b"deferred %d" % len(calls)])

        client.defer(news)
        channel.send_now([b"now"])  # queued at once, so it goes first
        client.defer(news)
        assert calls == []  # nothing ran in the caller's task
        await trio.testing.wait_all_tasks_blocked()
        assert calls == [0, 0] and received == [b"now", b"deferred 1", b"deferred 2"]
        assert stream.writes == before + 1
    client.defer(news)  # closed: dropped
    assert calls == [0, 0]


async def test_handshake_times_out_on_a_silent_peer(autojump_clock: trio.testing.MockClock) -> None:
    left, _right = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(TimedOutError):
        async with open_connection(left, CLIENT, initiator=True, handshake_timeout=3.0):
            raise AssertionError("unreachable")  # pragma: no cover
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_handshake_times_out_on_a_slow_peer(mock_clock: trio.testing.MockClock) -> None:
    """A peer that keeps dribbling bytes (one per virtual second) does not keep the handshake
    alive: the deadline is for the whole handshake, not per read."""
    left, right = trio.testing.memory_stream_pair()
    dropped = trio.Event()
    stopped = trio.Event()  # the peer sent everything or found the socket closed
    tick = trio.Event()

    async def dribble() -> None:
        hello = SecureConnection(CLIENT, initiator=True, now=0.0).data_to_send()
        try:
            for i in range(len(hello)):
                await left.send_all(hello[i : i + 1])
                await tick.wait()  # the next virtual second (see clock_driver)
        except trio.BrokenResourceError:
            dropped.set()
        finally:
            stopped.set()

    async def clock_driver() -> None:
        # Once everybody waits, one virtual second passes and the peer sends its next byte,
        # until the peer finds the socket closed under it.
        nonlocal tick
        while not stopped.is_set():
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1.0)
            tick.set()
            tick = trio.Event()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dribble)
        nursery.start_soon(clock_driver)
        start = trio.current_time()
        with pytest.raises(TimedOutError):
            async with open_connection(right, SERVER, initiator=False, handshake_timeout=10.0):
                raise AssertionError("unreachable")  # pragma: no cover
        assert trio.current_time() - start == pytest.approx(10.0)
        await stopped.wait()
        assert dropped.is_set()  # the socket was closed under the slow peer


async def test_wrong_remote_key_fails_the_handshake() -> None:
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            with pytest.raises((HandshakeError, ProtocolError)):
                async with open_connection(right, SERVER, initiator=False):
                    raise AssertionError("unreachable")  # pragma: no cover

        nursery.start_soon(serve)
        with pytest.raises(HandshakeError):
            async with open_connection(
                left, CLIENT, initiator=True, expected_remote_key=CLIENT.public_key
            ):
                raise AssertionError("unreachable")  # pragma: no cover


async def test_garbage_after_the_handshake_closes_only_that_connection() -> None:
    left, right = trio.testing.memory_stream_pair()
    # The "peer" is a bare core we drive by hand, so it can send a forged frame.
    peer = SecureConnection(CLIENT, initiator=True, now=0.0)
    async with trio.open_nursery() as nursery:

        async def drive_peer() -> None:
            await left.send_all(peer.data_to_send())
            while peer.result is None:
                peer.receive_data(await left.receive_some())
                await left.send_all(peer.data_to_send())
            await left.send_all(encode_frame(b"\x00" * 50))  # not a valid ciphertext

        nursery.start_soon(drive_peer)
        async with open_connection(right, SERVER, initiator=False) as conn:
            await conn.closed.wait()
            assert isinstance(conn.error, ProtocolError)
            with pytest.raises(ChannelClosedError):
                await conn.open_channel(("x", b""))


async def test_a_malformed_mux_frame_closes_the_connection_and_wakes_channels() -> None:
    left, right = trio.testing.memory_stream_pair()
    peer = SecureConnection(CLIENT, initiator=True, now=0.0)
    async with trio.open_nursery() as nursery:

        async def drive_peer() -> None:
            await left.send_all(peer.data_to_send())
            while peer.result is None:
                peer.receive_data(await left.receive_some())
                await left.send_all(peer.data_to_send())
            peer.send(b"\x09garbage")  # encrypted properly, but not a mux frame
            await left.send_all(peer.data_to_send())

        nursery.start_soon(drive_peer)
        async with open_connection(right, SERVER, initiator=False) as conn:
            await conn.closed.wait()
            assert isinstance(conn.error, ProtocolError)
            assert "mux frame type" in str(conn.error)


# -- RPC over memory streams ---------------------------------------------------------------


GATES: dict[int, trio.Event] = {}


def make_server(concurrency: int = 64) -> tuple[RpcServer, dict[str, int]]:
    server = RpcServer(concurrency=concurrency)
    stats = {"running": 0, "peak": 0}
    gate = GATES[id(stats)] = trio.Event()

    async def echo_value(value: object, context: CallContext) -> object:
        assert context.remote_public_key == CLIENT.public_key
        return value

    async def needs_entry(value: object, context: CallContext) -> object:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            from autobase_py.errors import DecodeError

            raise DecodeError("put: field 'name' is required")
        return value["name"]

    async def replica(value: object, context: CallContext) -> object:
        raise NotWritableError("this node is a read-only replica")

    async def forbidden(value: object, context: CallContext) -> object:
        raise UnauthorizedError("key not on the allow-list")

    async def broken(value: object, context: CallContext) -> object:
        raise RuntimeError("a bug with secrets in it")

    async def hang(value: object, context: CallContext) -> object:
        await trio.sleep_forever()

    async def busy(value: object, context: CallContext) -> object:
        stats["running"] += 1
        stats["peak"] = max(stats["peak"], stats["running"])
        await gate.wait()
        stats["running"] -= 1
        return b"done"

    server.method("echo", echo_value, request=CBOR, response=CBOR)
    server.method("put", needs_entry, request=CBOR, response=CBOR)
    server.method("replica", replica)
    server.method("forbidden", forbidden)
    server.method("broken", broken)
    server.method("hang", hang)
    server.method("busy", busy)
    with pytest.raises(ValueError):
        server.method("echo", echo_value)
    return server, stats


async def test_rpc_results_and_error_codes() -> None:
    server, _ = make_server()
    async with connected(server_protocols=server.protocols) as (client_conn, _):
        client = await RpcClient.open(client_conn)
        assert await client.call("echo", {"x": [1, 2]}, request=CBOR, response=CBOR) == {
            "x": [1, 2]
        }
        cases = {
            "nope": "UNKNOWN_METHOD",
            "replica": "NOT_WRITABLE",
            "forbidden": "UNAUTHORIZED",
            "broken": "INTERNAL",
        }
        for method, code in cases.items():
            with pytest.raises(RpcError) as info:
                await client.call(method)
            assert info.value.code == code
        assert "secrets" not in info.value.message
        with pytest.raises(RpcError) as info:
            await client.call("echo", b"\xff")  # not CBOR: the server's codec refuses it
        assert info.value.code == "BAD_REQUEST"
        with pytest.raises(RpcError) as info:
            await client.call("put", {"title": "x"}, request=CBOR, response=CBOR)
        assert info.value.code == "BAD_REQUEST" and "'name'" in info.value.message
        # The channel is still fine after all those errors.
        assert await client.call("echo", 5, request=CBOR, response=CBOR) == 5


async def test_rpc_timeout(autojump_clock: trio.testing.MockClock) -> None:
    server, _ = make_server()
    async with connected(server_protocols=server.protocols) as (client_conn, _):
        client = await RpcClient.open(client_conn)
        start = trio.current_time()
        with pytest.raises(RpcTimeoutError) as info:
            await client.call("hang")
        assert info.value.code == "TIMEOUT"
        assert isinstance(info.value, TimedOutError)
        assert trio.current_time() - start == pytest.approx(10.0)  # the default per-call timeout
        with pytest.raises(RpcTimeoutError):
            await client.call("hang", call_timeout=0.5)
        assert await client.call("echo", 1, request=CBOR, response=CBOR) == 1
        assert client.core.pending == 0


async def test_rpc_concurrency_cap() -> None:
    server, stats = make_server(concurrency=3)
    async with connected(server_protocols=server.protocols) as (client_conn, _):
        client = await RpcClient.open(client_conn)
        other = await RpcClient.open(client_conn, name=b"second")
        results: list[bytes] = []

        async def one(rpc_client: RpcClient) -> None:
            results.append(await rpc_client.call("busy"))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one, client)
            await trio.testing.wait_all_tasks_blocked()
            assert stats["running"] == 3  # the other five wait for a slot
            # The cap is server-wide: another channel cannot slip past it either.
            nursery.start_soon(one, other)
            await trio.testing.wait_all_tasks_blocked()
            assert stats["running"] == 3
            GATES[id(stats)].set()
        assert results == [b"done"] * 9
        assert stats["peak"] == 3


async def test_rpc_channel_closed_mid_call() -> None:
    server, _ = make_server()
    async with connected(server_protocols=server.protocols) as (client_conn, server_conn):
        client = await RpcClient.open(client_conn)
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                with pytest.raises(RpcChannelClosedError) as info:
                    await client.call("hang")
                assert info.value.code == "CHANNEL_CLOSED"
                assert isinstance(info.value, ChannelClosedError)

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            await server_conn.aclose()
        with pytest.raises(RpcChannelClosedError):
            await client.call("echo")


async def test_a_malformed_rpc_reply_closes_the_connection() -> None:
    async def liar(channel: Channel) -> None:
        await channel.receive()
        await channel.send(b"\xa0")  # an empty map: not a response

    async with connected(server_protocols={"rpc": liar}) as (client_conn, _):
        client = await RpcClient.open(client_conn)
        with pytest.raises(RpcChannelClosedError):
            await client.call("anything")
        await client_conn.closed.wait()
        assert isinstance(client_conn.error, ProtocolError)


async def test_reopening_a_name_we_refused_waits_for_the_peers_close() -> None:
    """We refused the peer's channel; before its close arrives we open the same name: the open
    waits for the old incarnation to end instead of failing (a writer learned later)."""
    from autobase_py.net.mux import ChannelRequested, Half, Mux

    left, right = trio.testing.memory_stream_pair()
    peer = SecureConnection(CLIENT, initiator=True, now=0.0)
    peer_mux = Mux()
    key = ("log", b"k")
    seen: list[object] = []
    got_frame = trio.Event()

    async def pump_in() -> None:
        while True:
            data = await left.receive_some()
            if not data:
                return
            for event in peer.receive_data(data):
                if hasattr(event, "data"):
                    seen.extend(peer_mux.receive_frame(event.data))  # type: ignore[union-attr]
                    got_frame.set()

    async def flush_peer() -> None:
        for frame in peer_mux.frames_to_send():
            peer.send(frame)
        await left.send_all(peer.data_to_send())

    async with trio.open_nursery() as nursery:

        async def handshake_peer() -> None:
            await left.send_all(peer.data_to_send())
            while peer.result is None:
                peer.receive_data(await left.receive_some())
                await left.send_all(peer.data_to_send())
            nursery.start_soon(pump_in)

        nursery.start_soon(handshake_peer)
        async with open_connection(right, SERVER, initiator=False) as conn:
            peer_mux.open(key)
            await flush_peer()
            while conn.mux.state(key) != (Half.CLOSED, Half.OPEN):  # refused, peer not told
                await trio.testing.wait_all_tasks_blocked()
            opened: list[object] = []

            async def reopen() -> None:
                opened.append(await conn.open_channel(key, b"again"))

            nursery.start_soon(reopen)
            await trio.testing.wait_all_tasks_blocked()
            assert opened == []  # waiting, not failed
            # The peer hears the refusal, closes its half; the name is free; our OPEN follows.
            while not any(isinstance(e, ChannelRequested) for e in seen):
                got_frame = trio.Event()
                await flush_peer()
                await got_frame.wait()
            peer_mux.open(key)
            await flush_peer()
            while not opened:
                await trio.testing.wait_all_tasks_blocked()
            assert conn.mux.is_open(key)
            assert ChannelRequested(key, b"again") in seen and peer_mux.is_open(key)
            nursery.cancel_scope.cancel()


def test_duplicate_rule_is_the_same_on_both_ends_whatever_the_order() -> None:
    """Each end sees the pair's connections as (initiator?, remote key, handshake hash); both
    must keep the same connection, in whichever order the handshakes finished."""
    from dataclasses import dataclass

    from autobase_py.net.endpoint_trio import keeps

    @dataclass
    class View:
        initiator: bool
        remote_public_key: bytes
        handshake_hash: bytes

    a, b = b"\x01" * 32, b"\x02" * 32
    # Connection id -> (who initiated, handshake hash)
    conns = {"x": (a, b"\x09" * 64), "y": (b, b"\x03" * 64), "z": (a, b"\x05" * 64)}

    def seen_by(me: bytes, other: bytes, cid: str) -> View:
        initiator, hh = conns[cid]
        return View(initiator == me, other, hh)

    def winner(me: bytes, other: bytes, order: list[str]) -> str:
        kept = order[0]
        for cid in order[1:]:
            old, new = seen_by(me, other, kept), seen_by(me, other, cid)
            if not keeps(old, new, me):  # type: ignore[arg-type]
                kept = cid
        return kept

    import itertools

    for ids_ in (["x", "y"], ["x", "z"], ["x", "y", "z"]):
        results = {
            winner(me, other, list(order))
            for me, other in ((a, b), (b, a))
            for order in itertools.permutations(ids_)
        }
        assert len(results) == 1, (ids_, results)
    # Different initiators: the lower key's dial wins; same initiator: the smaller hash wins.
    assert winner(a, b, ["y", "x"]) == "x"
    assert winner(b, a, ["x", "z"]) == "z"


# -- dead-peer detection -------------------------------------------------------------------

QUICK = Liveness(keepalive_interval=1.0, idle_timeout=4.0)


async def test_an_idle_healthy_pair_stays_connected(autojump_clock: trio.testing.MockClock) -> None:
    """Nothing to say for five idle timeouts: the keepalives (and their answers) keep both
    sides alive, even on a clock that jumps whenever every task waits."""
    async with connected(liveness=QUICK) as (client, server):
        sent = client.core.sent_count, server.core.sent_count
        assert not await closed_within(20.0, client, server)  # five idle timeouts
        assert not client.is_closed and not server.is_closed
        assert client.core.sent_count > sent[0] + 5 and server.core.sent_count > sent[1] + 5
        async with connected_channel(client, server) as (a, b):  # still fully usable
            await a.send(b"still here")
            assert await b.receive() == b"still here"


@asynccontextmanager
async def connected_channel(
    client: Connection, server: Connection
) -> AsyncIterator[tuple[Channel, Channel]]:
    async with trio.open_nursery() as nursery:
        box: list[Channel] = []

        async def accept() -> None:
            box.append(await server.open_channel(("test", b"x")))

        nursery.start_soon(accept)
        a = await client.open_channel(("test", b"x"))
        while not box:
            await trio.testing.wait_all_tasks_blocked()
        yield a, box[0]


async def test_the_default_settings_keep_an_idle_pair(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (client, server):
        assert client.core.keepalive_interval == 5.0 and client.core.idle_timeout == 20.0
        assert not await closed_within(120.0, client, server)
        assert not client.is_closed and not server.is_closed


async def test_a_silent_peer_is_dropped(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer completes the handshake, then neither reads nor writes (a frozen process, a
    pulled cable): the connection ends after the idle timeout, with the reason, and a
    channel waiting on it wakes with ChannelClosedError."""
    left, right = trio.testing.memory_stream_pair()

    async def frozen_peer() -> None:
        core = SecureConnection(SERVER, initiator=False, now=trio.current_time())
        while core.result is None:
            core.receive_data(await right.receive_some())
            await right.send_all(core.data_to_send())
        await trio.sleep_forever()  # holds the stream open, reads and writes nothing

    async with trio.open_nursery() as nursery:
        nursery.start_soon(frozen_peer)
        async with open_connection(left, CLIENT, initiator=True, liveness=QUICK) as conn:
            start = trio.current_time()
            await conn.closed.wait()
            silent = trio.current_time() - start
            assert 4.0 <= silent <= 4.0 + 1.0 + 1e-9  # within a tick of the timeout
            assert isinstance(conn.error, TimedOutError)
            assert "peer silent for 4 s" in str(conn.error)
            with pytest.raises(ChannelClosedError):
                await conn.open_channel(("test", b"x"))
        nursery.cancel_scope.cancel()
    assert "peer silent for 4 s" in caplog.text


async def test_a_peer_without_keepalives_answers_ours(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Interop with wire version 3 and older: a peer that neither sends keepalives nor knows
    them refuses our pings like a channel of an unknown protocol, which is an answer: the
    connection lives on, however long it stays idle."""
    caplog.set_level("INFO", logger="autobase_py.net")
    async with connected(
        server_liveness=LIVENESS_OFF,
        liveness=QUICK,
    ) as (client, old):
        old.mux.keepalive_protocol = None  # its mux treats the ping as any other OPEN
        assert not await closed_within(20.0, client, old)
        assert not client.is_closed and not old.is_closed
        assert old.core.deadline is None  # it ticks no timer of its own
    assert "refusing channel ('', b'i')" in caplog.text


async def test_liveness_can_be_turned_off(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(liveness=LIVENESS_OFF) as (client, _server):
        assert client.core.deadline is None
        before = client.core.sent_count
        assert not await closed_within(3600.0, client)
        assert client.core.sent_count == before and not client.is_closed


async def test_a_failure_in_the_moment_its_owner_cancels_stays_in_the_connection(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timeout fires just as whoever runs the connection cancels it (a pool being
    closed, say): the cancellation goes on to its scope, the failure is recorded on the
    connection, and no TimedOutError escapes into the owner's nursery."""
    owner = trio.CancelScope()

    def silent_at_once(core: SecureConnection, now: float) -> bool:
        owner.cancel()  # the reader, blocked on the socket, gets Cancelled in this same pass
        raise TimedOutError("peer silent for 4 s")

    with owner:
        async with connected(liveness=QUICK) as (client, server):
            monkeypatch.setattr(SecureConnection, "handle_timer", silent_at_once)
            await trio.sleep_forever()
    assert owner.cancelled_caught
    assert isinstance(client.error, TimedOutError) or isinstance(server.error, TimedOutError)
