"""The Replicator over trio memory streams: eager sync, sparse fetch, logs added on a live
connection, and peers that lie about proofs or capabilities."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from autobase_py import crypto
from autobase_py.log import Log, decode_proof
from autobase_py.net import connection_trio, replication
from autobase_py.net.connection_trio import (
    CHANNEL_BUFFER,
    Channel,
    Connection,
    open_connection,
)
from autobase_py.net.replication_trio import Replicator
from autobase_py.storage import Storage
from autobase_py.storage_trio import write_lock

A_KEYS, B_KEYS = crypto.key_pair(b"a" * 32), crypto.key_pair(b"b" * 32)


def writer(seed: bytes, blocks: int) -> Log:
    log = Log.create(Storage.open_memory(), crypto.key_pair(seed * 32))
    log.append([b"%s-%d" % (seed, i) for i in range(blocks)])
    return log


@asynccontextmanager
async def linked(
    left: Replicator, right: Replicator
) -> AsyncIterator[tuple[Connection, Connection]]:
    s1, s2 = trio.testing.memory_stream_pair()
    done = trio.Event()
    conns: dict[str, Connection] = {}
    ready = trio.Event()

    async def side(name: str, stream: trio.abc.Stream, initiator: bool, rep: Replicator) -> None:
        keys = A_KEYS if initiator else B_KEYS
        async with open_connection(stream, keys, initiator=initiator, protocols=rep.protocols) as c:
            conns[name] = c
            rep.attach(c)
            if len(conns) == 2:
                ready.set()
            await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "left", s1, True, left)
        nursery.start_soon(side, "right", s2, False, right)
        await ready.wait()
        yield conns["left"], conns["right"]
        done.set()


async def test_eager_replication_and_live_appends() -> None:
    source = writer(b"w", 500)
    replica = Log.replica(Storage.open_memory(), source.key)
    left, right = Replicator(logs=[source]), Replicator(logs=[replica])
    async with linked(left, right):
        with trio.fail_after(30):
            await right.wait_for(replica, lambda lg: lg.length == 500 and right.complete(lg))
            source.append([b"live"])
            left.announce(source)
            await right.wait_for(replica, lambda lg: lg.length == 501 and right.complete(lg))
    assert [replica.get(i) for i in (0, 499, 500)] == [b"w-0", b"w-499", b"live"]


@pytest.mark.parametrize("version", [4, 3])
async def test_a_held_follow_is_answered_without_the_news_delay(
    monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    # Version 4: the writer holds the replica's follow, so its news is a tip the replica waits
    # for: each live append goes out without ``_news_can_wait``. Version 3: a sync, which may
    # wait for more news.
    waits: list[bool] = []
    real_wait = connection_trio._news_can_wait

    async def news_can_wait(urgent: Callable[[], bool]) -> None:
        waits.append(True)
        await real_wait(urgent)

    monkeypatch.setattr(connection_trio, "_news_can_wait", news_can_wait)
    tips: list[int] = []
    real_tip = replication.LogSession._tip

    def tip(self: replication.LogSession, request_id: int, length: int) -> bytes:
        tips.append(length)
        return real_tip(self, request_id, length)

    monkeypatch.setattr(replication.LogSession, "_tip", tip)
    source = writer(b"h", 5)
    replica = Log.replica(Storage.open_memory(), source.key)
    left = Replicator(logs=[source], version=version)
    right = Replicator(logs=[replica], version=version)
    async with linked(left, right):
        with trio.fail_after(30):
            await right.wait_for(replica, lambda lg: lg.length == 5 and right.complete(lg))
            await trio.testing.wait_all_tasks_blocked()
            waits.clear()
            for length in (6, 7, 8):
                source.append([b"live %d" % length])
                left.announce(source)
                await right.wait_for(
                    replica, lambda lg, n=length: lg.length == n and right.complete(lg)
                )
                await trio.testing.wait_all_tasks_blocked()  # the next follow is held
    assert replica.get(7) == b"live 8"
    if version == 4:
        assert tips == [5, 6, 7] and waits == []
    else:
        assert tips == [] and len(waits) >= 3


async def test_the_news_delay_ends_once_urgent_data_is_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process that stays busy (other tasks always runnable, no time limit): the news wait
    # takes NEWS_PASSES passes, unless ``urgent()`` turns true: then it returns at once.
    monkeypatch.setattr(connection_trio, "NEWS_SECONDS", 1000.0)
    monkeypatch.setattr(
        trio.lowlevel, "current_statistics",
        lambda: types.SimpleNamespace(tasks_runnable=99),
    )
    looks = 0

    def urgent_after(count: int) -> Callable[[], bool]:
        def urgent() -> bool:
            nonlocal looks
            looks += 1
            return looks >= count

        return urgent

    await connection_trio._news_can_wait(urgent_after(1000))
    assert looks == connection_trio.NEWS_PASSES
    looks = 0
    await connection_trio._news_can_wait(urgent_after(5))
    assert looks == 5


async def test_sparse_fetch_downloads_one_block() -> None:
    source = writer(b"s", 300)
    replica = Log.replica(Storage.open_memory(), source.key)
    left, right = Replicator(logs=[source]), Replicator(logs=[replica], eager=False)
    async with linked(left, right):
        with trio.fail_after(30):
            assert await right.fetch(replica, 137) == b"s-137"
    assert replica.length == 300
    assert [i for i in range(300) if replica.has(i)] == [137]


async def test_a_log_added_later_replicates_on_the_live_connection() -> None:
    first, second = writer(b"f", 10), writer(b"g", 20)
    first_copy = Log.replica(Storage.open_memory(), first.key)
    storage = first_copy.storage
    left, right = Replicator(logs=[first, second]), Replicator(logs=[first_copy])
    async with linked(left, right):
        with trio.fail_after(30):
            await right.wait_for(first_copy, lambda lg: lg.length == 10 and right.complete(lg))
            second_copy = Log.replica(storage, second.key)  # a writer added by apply, say
            right.add(second_copy)
            await right.wait_for(second_copy, lambda lg: lg.length == 20 and right.complete(lg))
    assert second_copy.get(19) == b"g-19"


async def test_a_lying_peer_is_disconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    source = writer(b"l", 50)
    replica = Log.replica(Storage.open_memory(), source.key)
    honest = replication.encode_data

    def flip(request_id: int, proof: bytes) -> bytes:
        data = bytearray(proof)
        data[-5] ^= 0x01  # inside the manifest or a node hash: still decodes, fails to verify
        return honest(request_id, bytes(data))

    monkeypatch.setattr(replication, "encode_data", flip)
    left, right = Replicator(logs=[source]), Replicator(logs=[replica])
    async with linked(left, right) as (_, right_conn):
        with trio.fail_after(30):
            await right_conn.closed.wait()
    assert getattr(right_conn.error, "code", None) == "INVALID_PEER_DATA"
    assert replica.length == 0


async def test_a_wrong_capability_closes_the_connection() -> None:
    source = writer(b"c", 5)
    replica = Log.replica(Storage.open_memory(), source.key)

    class Guesser(Replicator):
        """Knows the discovery key (it is public) but not the log key: it can only guess."""

        def _our_capability(self, connection: Connection, item: Log) -> bytes:
            return b"\x00" * 32

    left, right = Guesser(logs=[replica]), Replicator(logs=[source])
    async with linked(left, right) as (left_conn, right_conn):
        with trio.fail_after(30):
            await right_conn.closed.wait()
            await left_conn.closed.wait()
    assert getattr(right_conn.error, "code", None) == "INVALID_PEER_DATA"
    assert replica.length == 0


async def test_a_peer_lying_in_a_range_answer_is_disconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = writer(b"r", 300)
    replica = Log.replica(Storage.open_memory(), source.key)
    honest = replication.encode_blocks

    def flip(
        request_id: int, fork: int, start: int, values: list[bytes], uncles: list[bytes]
    ) -> bytes:
        bad = [*values[:-1], values[-1] + b"!"]  # the last block (shared uncles) is forged
        return honest(request_id, fork, start, bad, uncles)

    monkeypatch.setattr(replication, "encode_blocks", flip)
    left, right = Replicator(logs=[source]), Replicator(logs=[replica], range_size=16)
    async with linked(left, right) as (_, right_conn):
        with trio.fail_after(30):
            await right_conn.closed.wait()
    assert getattr(right_conn.error, "code", None) == "INVALID_PEER_DATA"
    assert not any(replica.has(i) for i in range(replica.length))
    claims = right._claims[replica.discovery_key]
    assert claims.blocks == set() and claims.contiguous == 0
    assert not right.complete(replica) or replica.length == 0


async def test_announce_if_changed_announces_only_when_the_log_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = writer(b"n", 3)
    replica = Log.replica(Storage.open_memory(), source.key)
    left, right = Replicator(logs=[source]), Replicator(logs=[replica])
    assert left.has_key(source.key) and not left.has_key(replica.key + b"x")
    announced: list[int] = []
    real = left.announce

    def counting(item: Log) -> None:
        announced.append(item.length)
        real(item)

    monkeypatch.setattr(left, "announce", counting)
    async with linked(left, right):
        with trio.fail_after(30):
            await right.wait_for(replica, lambda lg: lg.length == 3 and right.complete(lg))
            left.announce_if_changed(source)  # the first call for a log always announces
            left.announce_if_changed(source)  # unchanged: not again
            source.append([b"more"])
            left.announce_if_changed(source)
            left.announce_if_changed(source)
            assert announced == [3, 4]
            await right.wait_for(replica, lambda lg: lg.length == 4 and right.complete(lg))
    assert replica.get(3) == b"more"


@pytest.mark.parametrize("socket_busy", [False, True])
async def test_announce_sends_at_once_or_through_the_pusher_when_the_socket_is_busy(
    monkeypatch: pytest.MonkeyPatch, socket_busy: bool
) -> None:
    # Not busy: ``announce`` hands the news to the connection's writer, so a live append
    # reaches the peer even with the pushers stopped. Busy (the connection over its
    # high-water mark): it leaves the news to the pusher, which waits for the socket.
    pushed: list[bool] = []
    real_push = Replicator._push

    async def push(self: Replicator, live: object) -> None:
        pushed.append(True)
        if socket_busy:
            await real_push(self, live)  # type: ignore[arg-type]
        else:
            await trio.sleep_forever()

    monkeypatch.setattr(Replicator, "_push", push)
    if socket_busy:
        monkeypatch.setattr(Channel, "can_send_now", property(lambda self: False))
    source = writer(b"p", 5)
    replica = Log.replica(Storage.open_memory(), source.key)
    left, right = Replicator(logs=[source]), Replicator(logs=[replica])
    async with linked(left, right):
        with trio.fail_after(30):
            await right.wait_for(replica, lambda lg: lg.length == 5 and right.complete(lg))
            for length in (6, 7, 8):
                source.append([b"live %d" % (length - 6)])
                left.announce(source)
                await right.wait_for(
                    replica, lambda lg, n=length: right.complete(lg) and lg.length == n
                )
    assert pushed and [replica.get(i) for i in (5, 6, 7)] == [b"live 0", b"live 1", b"live 2"]


def record_syncs(monkeypatch: pytest.MonkeyPatch, replica: Log) -> list[int]:
    """The lengths that ``replica``'s sessions are told, in order: by syncs, and by tips (the
    answer to a follow, which is the writer's sync too)."""
    synced: list[int] = []
    real = replication.LogSession.receive

    def receive(self: replication.LogSession, data: bytes) -> tuple[list[bytes], bool]:
        msg = replication.decode_message(data)
        if self.log is replica and msg["t"] == "sync":
            synced.append(msg["length"])
        if self.log is replica and msg["t"] == "tip":
            upgrade = decode_proof(msg["proof"]).upgrade
            assert upgrade is not None
            synced.append(upgrade.length)
        return real(self, data)

    monkeypatch.setattr(replication.LogSession, "receive", receive)
    return synced


@asynccontextmanager
async def caught_up(
    monkeypatch: pytest.MonkeyPatch, seed: bytes, blocks: int
) -> AsyncIterator[tuple[Log, Log, Replicator, Replicator, list[int]]]:
    """A writer of ``blocks`` blocks and its replica, linked and caught up, within a 30 s
    limit; yields (source, replica, their replicators, the syncs the replica receives from
    then on)."""
    source = writer(seed, blocks)
    replica = Log.replica(Storage.open_memory(), source.key)
    left, right = Replicator(logs=[source]), Replicator(logs=[replica])
    synced = record_syncs(monkeypatch, replica)
    async with linked(left, right):
        with trio.fail_after(30):
            await right.wait_for(replica, lambda lg: lg.length == blocks and right.complete(lg))
            await trio.testing.wait_all_tasks_blocked()
            synced.clear()
            yield source, replica, left, right, synced


async def test_a_burst_of_appends_costs_each_peer_one_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    # The news of an announce is computed when the connection next writes: appends announced
    # one after another without a scheduler pass in between reach the peer as one sync.
    async with caught_up(monkeypatch, b"u", 5) as (source, replica, left, right, synced):
        for i in range(10):
            source.append([b"burst %d" % i])
            left.announce(source)
        await right.wait_for(replica, lambda lg: lg.length == 15 and right.complete(lg))
        await trio.testing.wait_all_tasks_blocked()
    assert synced == [15]
    assert [replica.get(i) for i in (5, 14)] == [b"burst 0", b"burst 9"]


async def test_news_waits_while_the_process_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Appends a scheduler pass apart, while another task always has work (an apply loop):
    # the writer, with only news to send, waits for more, so the peer gets fewer syncs than
    # appends (one write per pass sent about one sync per two appends); once nothing else
    # runs, the last of it goes out at once.
    async with caught_up(monkeypatch, b"x", 5) as (source, replica, left, right, synced):
        stop = trio.Event()

        async def busy() -> None:
            while not stop.is_set():
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy)
            for i in range(20):
                source.append([b"busy %d" % i])
                left.announce(source)
                await trio.lowlevel.checkpoint()
            stop.set()
        await right.wait_for(replica, lambda lg: lg.length == 25 and right.complete(lg))
    assert synced[-1] == 25 and len(synced) <= 6
    assert [replica.get(i) for i in (5, 24)] == [b"busy 0", b"busy 19"]


async def test_news_waits_for_another_tasks_open_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A task holding a transaction across awaits (a base's cycle) may have appended without
    # committing yet: the news of an announce made meanwhile goes out once it ends.
    async with caught_up(monkeypatch, b"v", 3) as (source, replica, left, right, synced):
        with source.storage.transaction(flat=True):
            source.append([b"late"])
            left.announce(source)
            for _ in range(100):
                await trio.lowlevel.checkpoint()
            assert synced == []  # not even told of it
        await right.wait_for(replica, lambda lg: lg.length == 4 and right.complete(lg))
    assert synced == [4] and replica.get(3) == b"late"


@pytest.mark.parametrize("lying", [False, True])
async def test_peer_data_waits_for_another_tasks_open_transaction(
    monkeypatch: pytest.MonkeyPatch, lying: bool
) -> None:
    # A task (like a base's apply cycle) holds a flat transaction open across awaits. Peer
    # data is not written into it: an honest answer is stored after it commits; a lying one
    # drops the peer without dooming the other task's transaction.
    source = writer(b"t", 20)
    storage = Storage.open_memory()
    replica = Log.replica(storage, source.key)
    if lying:
        honest = replication.encode_data

        def flip(request_id: int, proof: bytes) -> bytes:
            data = bytearray(proof)
            data[-5] ^= 0x01
            return honest(request_id, bytes(data))

        monkeypatch.setattr(replication, "encode_data", flip)
    left, right = Replicator(logs=[source]), Replicator(logs=[replica])
    async with linked(left, right) as (_, right_conn):
        with trio.fail_after(30):
            with storage.transaction(flat=True):
                for _ in range(300):  # plenty of passes for the whole exchange
                    await trio.lowlevel.checkpoint()
                assert replica.length == 0 and not right_conn.is_closed
            # ... and it committed: peer data did not doom it (StorageError otherwise)
            if lying:
                await right_conn.closed.wait()
            else:
                await right.wait_for(replica, lambda lg: lg.length == 20 and right.complete(lg))
    if lying:
        assert getattr(right_conn.error, "code", None) == "INVALID_PEER_DATA"
        assert replica.length == 0
    else:
        assert replica.get(19) == b"t-19"


@pytest.mark.parametrize("version", [3, 4])
async def test_a_channel_that_overflowed_is_opened_again(
    caplog: pytest.LogCaptureFixture, version: int
) -> None:
    # The replica's session is stuck (another task holds its storage's write lock) while the
    # writer announces one append at a time: version 3, more syncs than a channel buffers pile
    # up, the replica's end of the channel overflows and is closed. Once the session can go on,
    # the log must replicate again on the same connection (it used to be lost for good).
    # Version 4: the writer sends one tip and then waits for the replica's next follow, so
    # nothing piles up.
    source = writer(b"o", 1)
    storage = Storage.open_memory()
    replica = Log.replica(storage, source.key)
    left = Replicator(logs=[source], version=version)
    right = Replicator(logs=[replica], version=version)
    appends = CHANNEL_BUFFER + 100
    async with linked(left, right) as (_, right_conn):
        with trio.fail_after(60):
            await right.wait_for(replica, lambda lg: lg.length == 1 and right.complete(lg))
            async with write_lock(storage):
                for i in range(appends):
                    source.append([b"o-late-%d" % i])
                    left.announce(source)
                    await trio.testing.wait_all_tasks_blocked()
                assert replica.length == 1
                overflowed = any("overflowed" in r.getMessage() for r in caplog.records)
                assert overflowed == (version == 3)
            total = appends + 1
            await right.wait_for(replica, lambda lg: lg.length == total and right.complete(lg))
    assert (right.reopened >= 1) == (version == 3)
    assert not right_conn.error
    assert replica.get(total - 1) == b"o-late-%d" % (appends - 1)
