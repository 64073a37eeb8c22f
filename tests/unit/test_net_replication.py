"""Replication sessions wired to each other directly (no sockets): sync, sparse reads, forks,
shared claims, and every way a peer can lie."""

from __future__ import annotations

import pytest

from autobase_py import crypto, encoding
from autobase_py.errors import LocalError
from autobase_py.log import Log, decode_proof, encode_proof
from autobase_py.net import replication as rep
from autobase_py.net.replication import Claims, InvalidPeerDataError, LogSession, capability
from autobase_py.storage import Storage

WRITER = crypto.key_pair(b"w" * 32)


def writer_log(blocks: int) -> Log:
    log = Log.create(Storage.open_memory(), WRITER)
    for start in range(0, blocks, 50):
        log.append([b"block %d" % i for i in range(start, min(blocks, start + 50))])
    return log


def replica_of(log: Log) -> Log:
    return Log.replica(Storage.open_memory(), log.key)


def run(a: LogSession, b: LogSession, *, max_rounds: int = 10_000) -> None:
    """Shuttle messages between two sessions until both are quiet."""
    queues = {id(a): a.start(), id(b): b.start()}
    for _ in range(max_rounds):
        if not queues[id(a)] and not queues[id(b)]:
            return
        for src, dst in ((a, b), (b, a)):
            pending, queues[id(src)] = queues[id(src)], []
            for message in pending:
                out, _ = dst.receive(message)
                queues[id(dst)] += out
    raise AssertionError("sessions did not go quiet")


def test_a_replica_downloads_everything_and_verifies_it() -> None:
    source = writer_log(300)
    replica = replica_of(source)
    theirs, mine = LogSession(source), LogSession(replica, window=16)
    run(theirs, mine)
    assert (replica.length, replica.fork) == (300, 0)
    assert all(replica.get(i) == b"block %d" % i for i in range(300))
    assert mine.upgrades_received == 1 and mine.blocks_received == 300
    assert mine.claims.contiguous == 300
    assert mine.done and mine.inflight == 0
    assert mine.following and theirs.holding  # the writer holds the replica's follow
    # Live: the writer appends; one message (the tip) brings the upgrade and the block.
    source.append([b"late", b"later"])
    out = theirs.local_changed()
    assert [rep.decode_message(m)["t"] for m in out] == ["tip"]  # no sync: the tip is one
    back, stored = mine.receive(out[0])
    assert stored and replica.length == 302 and replica.get(301) == b"later"
    assert mine.tips_received == 1 and mine.claims.contiguous == 302
    # the replica follows again and does not sync the length the tip brought
    assert [rep.decode_message(m)["t"] for m in back] == ["follow"]
    assert theirs.receive(back[0]) == ([], False)
    assert theirs.holding and theirs.local_changed() == []


def test_a_version_3_pair_follows_a_live_log_with_sync_and_request() -> None:
    source = writer_log(300)
    replica = replica_of(source)
    theirs, mine = LogSession(source, version=3), LogSession(replica, window=16, version=3)
    run(theirs, mine)
    assert replica.length == 300 and mine.done and not mine.following
    source.append([b"late"])
    out = theirs.local_changed()
    assert [rep.decode_message(m)["t"] for m in out] == ["sync"]
    queue = out
    while queue:
        nxt = []
        for message in queue:
            more, _ = mine.receive(message)
            for reply in more:
                back, _ = theirs.receive(reply)
                nxt += back
        queue = nxt
    assert replica.length == 301 and replica.get(300) == b"late"


def test_sparse_mode_fetches_only_what_is_wanted() -> None:
    source = writer_log(100)
    replica = replica_of(source)
    theirs, mine = LogSession(source), LogSession(replica, eager=False)
    run(theirs, mine)
    assert replica.length == 100  # the upgrade came, the blocks did not
    assert not any(replica.has(i) for i in range(100))
    queue = mine.want(42, 44)
    while queue:
        nxt: list[bytes] = []
        for message in queue:
            back, _ = theirs.receive(message)
            for reply in back:
                more, _ = mine.receive(reply)
                nxt += more
        queue = nxt
    assert [i for i in range(100) if replica.has(i)] == [42, 43]
    with pytest.raises(LocalError):
        mine.want(5, 2)


def test_a_replica_follows_a_new_fork() -> None:
    source = writer_log(40)
    replica = replica_of(source)
    run(LogSession(source), LogSession(replica))
    source.truncate(30)
    source.append([b"fork one %d" % i for i in range(15)])
    run(LogSession(source), LogSession(replica))
    assert (replica.length, replica.fork) == (45, 1)
    assert replica.get(10) == b"block 10"
    assert replica.get(44) == b"fork one 14"


def test_replicas_serve_what_they_hold_and_say_none_otherwise() -> None:
    source = writer_log(20)
    sparse = replica_of(source)
    sparse_session = LogSession(sparse, eager=False)
    run(LogSession(source), sparse_session)
    # A third node asks the sparse replica for a block it does not hold.
    answer = sparse_session.receive(rep.encode_request(0, 5, None))[0]
    assert [rep.decode_message(m)["t"] for m in answer] == ["none"]
    answer = sparse_session.receive(rep.encode_request(1, None, 999))[0]
    assert [rep.decode_message(m)["t"] for m in answer] == ["none"]


def asked_blocks(messages: list[bytes]) -> list[int]:
    """The blocks that ``range`` (and block ``request``) messages among ``messages`` ask for."""
    blocks: list[int] = []
    for message in messages:
        msg = rep.decode_message(message)
        if msg["t"] == "range":
            blocks += range(msg["start"], msg["end"])
        elif msg["t"] == "request" and msg["index"] is not None:
            blocks.append(msg["index"])
    return blocks


@pytest.mark.parametrize("range_size", [1, 2])
def test_sessions_of_one_log_do_not_ask_twice_for_a_block(range_size: int) -> None:
    source = writer_log(10)
    replica = replica_of(source)
    claims = Claims()
    window = 4 // range_size  # four blocks in flight per session
    first, second = (
        LogSession(replica, claims, window=window, range_size=range_size) for _ in range(2)
    )
    sync = rep.encode_sync(source.length, source.fork)
    # Both learn the length first (through an upgrade proof answered by hand).
    upgrade = first.receive(sync)[0]
    proof = LogSession(source).receive(upgrade[0])[0][0]
    after_upgrade = first.receive(proof)[0]  # a sync of the new length, then block requests
    asked_first = asked_blocks(after_upgrade)
    assert first.pump() == []  # its window is full
    asked_second = asked_blocks(second.receive(sync)[0])
    asked = asked_first + asked_second
    assert len(asked) == len(set(asked)) == 8  # two windows of four, disjoint
    first.release()  # the first peer left: its claims go back
    assert claims.blocks == set(asked_second)


# -- lying peers -----------------------------------------------------------------------------


def requested(session: LogSession, source: Log) -> tuple[LogSession, list[bytes]]:
    """A replica session after the sync, with the data answers the honest source would send."""
    honest = LogSession(source)
    requests = session.receive(rep.encode_sync(source.length, source.fork))[0]
    answers = [honest.receive(r)[0][0] for r in requests]
    return honest, answers


def block_requests(messages: list[bytes]) -> list[bytes]:
    return [m for m in messages if rep.decode_message(m)["t"] in ("request", "range")]


def range_answer(source: Log) -> tuple[LogSession, Log, dict[str, object]]:
    """A fresh replica session that holds the length of ``source`` and has asked for its
    blocks in one range, with the honest ``blocks`` answer (decoded)."""
    replica = replica_of(source)
    session = LogSession(replica)
    honest, answers = requested(session, source)
    requests = block_requests(session.receive(answers[0])[0])  # the upgrade, then blocks
    assert len(requests) == 1
    data = rep.decode_message(honest.receive(requests[0])[0][0])
    assert data["t"] == "blocks" and len(data["values"]) == source.length
    return session, replica, data


def resend(session: LogSession, data: dict[str, object], **changes: object) -> None:
    msg = {**data, **changes}
    session.receive(
        rep.encode_blocks(msg["id"], msg["fork"], msg["start"], msg["values"], msg["uncles"])  # type: ignore[arg-type]
    )


def test_a_flipped_bit_anywhere_in_a_proof_is_caught_and_nothing_is_stored() -> None:
    source = writer_log(8)
    _, answers = requested(LogSession(replica_of(source)), source)
    data = rep.decode_message(answers[0])
    raw = data["proof"]
    caught = 0
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        replica = replica_of(source)
        session = LogSession(replica)
        session.receive(rep.encode_sync(source.length, source.fork))
        try:
            session.receive(rep.encode_data(data["id"], bytes(bad)))
        except InvalidPeerDataError:
            caught += 1
            assert replica.length == 0 and replica.manifest is None
        else:  # pragma: no cover - a flip that verifies would be a forgery
            raise AssertionError(f"flipped byte {pos} was accepted")
    assert caught == len(raw)


@pytest.mark.parametrize("forged", [0, 1, 6, 12])
def test_a_tampered_block_value_is_rejected(forged: int) -> None:
    # Block 0 carries all its uncles, the others share them: a forged value anywhere fails.
    source = writer_log(13)
    session, replica, data = range_answer(source)
    values = list(data["values"])  # type: ignore[call-overload]
    values[forged] = b"forged"
    with pytest.raises(InvalidPeerDataError, match="invalid proof"):
        resend(session, data, values=values)
    assert not any(replica.has(i) for i in range(13))  # the answer is stored whole or not at all
    assert session.claims.blocks == set()


def test_a_flipped_bit_anywhere_in_a_blocks_answer_never_stores_a_forgery() -> None:
    source = writer_log(8)
    _, _, data = range_answer(source)
    raw = rep.encode_blocks(data["id"], data["fork"], data["start"], data["values"], data["uncles"])  # type: ignore[arg-type]
    caught = 0
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        session, replica, _ = range_answer(source)
        try:
            session.receive(bytes(bad))
        except InvalidPeerDataError:
            caught += 1
            assert not any(replica.has(i) for i in range(8))
        else:
            # An uncle the replica did not need (it trusted a node below it) may change
            # unnoticed, and an answer claiming another fork is dropped: whatever was stored
            # is the writer's data.
            held = [i for i in range(8) if replica.has(i)]
            assert held in ([], list(range(8)))
            assert all(replica.get(i) == b"block %d" % i for i in held)
    # Unnoticed: the fork field, and the top shared uncle of each later block (the replica
    # stored that node while verifying the block before it).
    assert len(raw) - caught <= 7 * 40 + 8


def test_a_short_answer_is_stored_and_the_rest_asked_again() -> None:
    source = writer_log(10)
    session, replica, data = range_answer(source)
    values, uncles = data["values"], data["uncles"]
    out, stored = session.receive(
        rep.encode_blocks(data["id"], data["fork"], data["start"], values[:4], uncles[:4])  # type: ignore[index]
    )
    assert stored and [i for i in range(10) if replica.has(i)] == [0, 1, 2, 3]
    assert asked_blocks(out) == list(range(4, 10))
    assert session.claims.blocks == set(range(4, 10))


def test_an_answer_from_another_fork_is_dropped_without_blame() -> None:
    source = writer_log(6)
    session, replica, data = range_answer(source)
    out, _ = session.receive(
        rep.encode_blocks(data["id"], 1, data["start"], data["values"], data["uncles"])  # type: ignore[arg-type]
    )
    assert not any(replica.has(i) for i in range(6))
    assert asked_blocks(out) == []  # not from this peer until it syncs again
    again, _ = session.receive(rep.encode_sync(6, 0))
    assert asked_blocks(again) == list(range(6))


def test_answers_that_were_never_asked_for() -> None:
    source = writer_log(4)
    session = LogSession(replica_of(source))
    with pytest.raises(InvalidPeerDataError, match="not pending"):
        session.receive(rep.encode_none(7))
    _, answers = requested(session, source)
    # An answer to the upgrade request that proves a block instead of nothing is fine only if
    # it is the block asked for: prove block 2 for a request about block 0.
    first = rep.decode_message(block_requests(session.receive(answers[0])[0])[0])
    wrong = encode_proof(source.proof(first["start"] + 1))
    with pytest.raises(InvalidPeerDataError, match="asked for"):
        session.receive(rep.encode_data(first["id"], wrong))


@pytest.mark.parametrize("shift", [1, -1])
def test_blocks_that_do_not_answer_the_range(shift: int) -> None:
    source = writer_log(4)
    session, _, data = range_answer(source)
    values, uncles = data["values"], data["uncles"]
    if shift > 0:  # starts one block late
        start, values, uncles = 1, values[1:], uncles[1:]  # type: ignore[index]
    else:  # one block too many
        start, values, uncles = 0, [*values, b"x"], [*uncles, b""]  # type: ignore[misc]
    with pytest.raises(InvalidPeerDataError, match="asked for"):
        session.receive(rep.encode_blocks(data["id"], 0, start, values, uncles))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "obj",
    [
        [1],
        {"t": "sync", "length": 1},
        {"t": "sync", "length": -1, "fork": 0},
        {"t": "sync", "length": 1, "fork": 0, "x": 1},
        {"t": "request", "id": 0, "index": None, "upgrade": None},
        {"t": "request", "id": 0, "index": "1", "upgrade": None},
        {"t": "request", "id": 0, "index": True, "upgrade": None},
        {"t": "data", "id": 0, "proof": "text"},
        {"t": "gossip", "id": 0},
    ],
)
def test_malformed_messages(obj: object) -> None:
    with pytest.raises(InvalidPeerDataError):
        rep.decode_message(encoding.encode(obj))


def test_undecodable_proof_is_the_peers_fault() -> None:
    source = writer_log(4)
    session = LogSession(replica_of(source))
    requests = session.receive(rep.encode_sync(4, 0))[0]
    request_id = rep.decode_message(requests[0])["id"]
    with pytest.raises(InvalidPeerDataError, match="undecodable"):
        session.receive(rep.encode_data(request_id, b"\xff\x00"))


def test_capabilities_bind_key_connection_and_role() -> None:
    key, other = b"k" * 32, b"o" * 32
    h1, h2 = b"1" * 64, b"2" * 64
    base = capability(key, h1, initiator=True)
    assert len(base) == 32
    assert base == capability(key, h1, initiator=True)
    assert base != capability(key, h1, initiator=False)
    assert base != capability(key, h2, initiator=True)
    assert base != capability(other, h1, initiator=True)


def test_a_relay_that_lacked_a_block_says_have_once_it_arrives() -> None:
    source = writer_log(6)
    relay = replica_of(source)
    relay_up = LogSession(relay, eager=False)  # the relay's session towards the writer
    run(LogSession(source), relay_up)  # the relay knows the length, holds no block
    leaf = replica_of(source)
    leaf_session, relay_down = LogSession(leaf), LogSession(relay)
    run(relay_down, leaf_session)  # the leaf got the upgrade and "none" for every block
    assert leaf.length == 6 and not any(leaf.has(i) for i in range(6))
    # The relay now fetches block 3 from the writer ...
    queue = relay_up.want(3, 4)
    writer_side = LogSession(source)
    writer_side.receive(rep.encode_sync(relay.length, relay.fork))
    for message in queue:
        for reply in writer_side.receive(message)[0]:
            relay_up.receive(reply)
    assert relay.has(3)
    # ... and tells the leaf, which asks again and gets it.
    announced = relay_down.local_changed()
    assert [rep.decode_message(m)["t"] for m in announced] == ["have"]
    shuttle(announced, leaf_session, relay_down)
    assert [i for i in range(6) if leaf.has(i)] == [3]


def test_have_ranges_coalesce_consecutive_blocks() -> None:
    assert list(rep._ranges([])) == []
    assert list(rep._ranges([4])) == [(4, 5)]
    assert list(rep._ranges([1, 2, 3, 5, 7, 8])) == [(1, 4), (5, 6), (7, 9)]
    with pytest.raises(InvalidPeerDataError, match="empty range"):
        rep.decode_message(rep.encode_have(3, 3))


def test_a_peer_that_refuses_its_own_claimed_length_is_not_asked_in_a_loop() -> None:
    source = writer_log(3)
    session = LogSession(replica_of(source))
    requests = session.receive(rep.encode_sync(1000, 0))[0]  # claims far more than it has
    upgrade = rep.decode_message(requests[0])
    assert upgrade["upgrade"] == 0
    again, _ = session.receive(rep.encode_none(upgrade["id"]))
    assert again == []  # no new upgrade request until the peer syncs again
    assert block_requests(session.local_changed()) == []
    retry = session.receive(rep.encode_sync(3, 0))[0]
    assert [rep.decode_message(m)["upgrade"] for m in retry] == [0]


# -- live following: the upgrade carries the first new block ---------------------------------
# (wire version 3; a version-4 replica does the same with a peer that holds no follows)


def live_pair(blocks: int, version: int = 3) -> tuple[Log, Log, LogSession, LogSession]:
    """A writer and a replica that holds its first ``blocks`` blocks, with their sessions."""
    source = writer_log(blocks)
    replica = replica_of(source)
    theirs, mine = LogSession(source, version=version), LogSession(replica, version=version)
    run(theirs, mine)
    assert replica.length == blocks and all(replica.has(i) for i in range(blocks))
    return source, replica, theirs, mine


def kinds(messages: list[bytes]) -> list[str]:
    return [rep.decode_message(m)["t"] for m in messages]


def test_a_live_append_arrives_with_its_upgrade_in_one_round_trip() -> None:
    source, replica, theirs, mine = live_pair(20)
    source.append([b"next"])
    (sync,) = theirs.local_changed()
    (ask,) = mine.receive(sync)[0]
    request = rep.decode_message(ask)
    assert (request["t"], request["index"], request["upgrade"]) == ("request", 20, 20)
    assert mine.claims.blocks == {20}
    (answer,) = theirs.receive(ask)[0]
    assert theirs.remote_length == 21  # it counts the replica at the length it proved
    out, stored = mine.receive(answer)
    assert stored and replica.length == 21 and replica.get(20) == b"next"
    assert kinds(out) == []  # nothing left to ask for, and no sync the writer could predict
    assert mine.claims.blocks == set() and mine.blocks_received == 21
    assert mine.claims.arrivals[-1] == (20, 21)


def test_an_upgrade_answer_proving_another_block_is_rejected() -> None:
    source, replica, theirs, mine = live_pair(20)
    source.append([b"a", b"b"])
    (ask,) = mine.receive(theirs.local_changed()[0])[0]
    request = rep.decode_message(ask)
    wrong = encode_proof(source.proof(21, 20))
    with pytest.raises(InvalidPeerDataError, match="not asked for"):
        mine.receive(rep.encode_data(request["id"], wrong))
    assert replica.length == 20 and not replica.has(21)
    assert mine.claims.blocks == set()


def test_an_upgrade_answer_without_the_block_is_fine_and_the_block_asked_again() -> None:
    source, replica, theirs, mine = live_pair(20)
    source.append([b"a"])
    (ask,) = mine.receive(theirs.local_changed()[0])[0]
    request = rep.decode_message(ask)
    upgrade_only = encode_proof(source.proof(None, 20))
    out, _ = mine.receive(rep.encode_data(request["id"], upgrade_only))
    assert replica.length == 21 and not replica.has(20)
    assert asked_blocks(out) == [20]


def test_a_replica_lacking_the_block_still_serves_the_upgrade() -> None:
    source = writer_log(20)
    sparse = replica_of(source)
    sparse_session = LogSession(sparse, eager=False)
    run(LogSession(source), sparse_session)  # the length, no blocks
    (answer,) = sparse_session.receive(rep.encode_request(3, 19, 0))[0]
    msg = rep.decode_message(answer)
    assert msg["t"] == "data"
    proof = decode_proof(msg["proof"])
    assert proof.block is None and proof.upgrade is not None and proof.upgrade.start == 0


# -- asking a peer shorter than us -----------------------------------------------------------


def test_provable_limit_stops_at_the_last_root_of_ours_within_the_peer() -> None:
    assert rep.provable_limit(10, 10) == rep.provable_limit(10, 12) == 10
    assert rep.provable_limit(492, 491) == 488  # roots 256+128+64+32+8 | 4
    assert rep.provable_limit(492, 488) == 488
    assert rep.provable_limit(492, 487) == 480
    assert rep.provable_limit(8, 7) == 0
    assert rep.provable_limit(0, 0) == 0


def test_a_peer_shorter_than_us_is_asked_only_what_it_can_prove() -> None:
    # The writer at 492; peer B holds 491 blocks (it has not caught up yet); replica C knows
    # the length 492 (upgrade only). B's answers carry uncles up to B's roots, so C must not
    # ask B for blocks under its root [488, 492): no honest answer could verify.
    source = writer_log(491)
    peer = replica_of(source)
    run(LogSession(source), LogSession(peer))
    source.append([b"block 491"])
    replica = replica_of(source)
    run(LogSession(source), LogSession(replica, eager=False))
    assert (replica.length, peer.length) == (492, 491)
    serving, fetching = LogSession(peer), LogSession(replica)
    run(serving, fetching)  # raised InvalidPeerDataError (an honest peer blamed) before
    assert [i for i in range(492) if replica.has(i)] == list(range(488))
    # Once B caught up and says so, the rest comes from it.
    run(LogSession(source), LogSession(peer))
    run(serving, fetching)
    assert all(replica.has(i) for i in range(492))


def test_an_answer_outgrown_while_in_flight_is_asked_again_without_blame() -> None:
    # C asks B (at 491, like C then) for ranges; before B's answers arrive, C learns 492 from
    # the writer, so its root over [488, 492) is no longer under B's roots: the answer for
    # [384, 491) cannot verify, by no fault of B. It is dropped, and asked again within what
    # B can prove.
    source = writer_log(491)
    peer = replica_of(source)
    run(LogSession(source), LogSession(peer))
    source.append([b"block 491"])
    replica = replica_of(source)
    serving, fetching = LogSession(peer, version=3), LogSession(replica, version=3)
    (ask_upgrade,) = fetching.receive(serving.start()[0])[0]
    (upgrade,) = serving.receive(ask_upgrade)[0]
    asks = block_requests(fetching.receive(upgrade)[0])
    assert asked_blocks(asks) == list(range(491))
    run(LogSession(source), LogSession(replica, eager=False))  # the writer's length: 492
    assert replica.length == 492
    again: list[bytes] = []
    for ask in asks:
        for answer in serving.receive(ask)[0]:
            again += block_requests(fetching.receive(answer)[0])
    assert [i for i in range(492) if replica.has(i)] == list(range(384))
    assert asked_blocks(again) == list(range(384, 488))
    # The same failure from an unchanged state is B's fault.
    ask = rep.decode_message(again[0])
    bad = serving.receive(rep.encode_range(ask["id"], 384, 488))[0][0]
    data = rep.decode_message(bad)
    values = list(data["values"])
    values[-1] = b"forged"
    with pytest.raises(InvalidPeerDataError, match="invalid proof"):
        fetching.receive(
            rep.encode_blocks(data["id"], data["fork"], data["start"], values, data["uncles"])
        )


# -- no sync answers an upgrade ----------------------------------------------------------------


def test_a_server_counts_the_requester_at_the_length_it_proved() -> None:
    """The requester of an upgrade sends no sync once it stored the answer, and the server
    already counts it there; a later change is synced as usual."""
    source, replica, theirs, mine = live_pair(20)
    for extra in range(3):
        source.append([b"more %d" % extra])
        (sync,) = theirs.local_changed()
        (ask,) = mine.receive(sync)[0]
        (answer,) = theirs.receive(ask)[0]
        assert theirs.remote_length == replica.length + 1
        out, _ = mine.receive(answer)
        assert kinds(out) == [] and replica.length == 21 + extra
    # A sync that crossed the request keeps the sides in agreement: the replica moved (another
    # peer), so the upgrade from its old state does not fit; it syncs, the server listens.
    source.append([b"x"])
    (sync,) = theirs.local_changed()
    (ask,) = mine.receive(sync)[0]
    (answer,) = theirs.receive(ask)[0]
    source.append([b"y"])
    side, other = LogSession(replica, claims=Claims()), LogSession(source, version=3)
    shuttle(side.receive(other.start()[0])[0], other, side)
    assert replica.length == 25
    out, stored = mine.receive(answer)
    assert not stored and kinds(out) == ["sync"]
    theirs.receive(out[0])
    assert theirs.remote_length == 25


def shuttle(first: list[bytes], server: LogSession, client: LogSession) -> None:
    """``first`` (from ``client``) to ``server``, and every answer back and forth until quiet."""
    queue = first
    while queue:
        nxt: list[bytes] = []
        for message in queue:
            for reply in server.receive(message)[0]:
                nxt += client.receive(reply)[0]
        queue = nxt


def test_a_range_asked_of_an_assumed_length_that_fails_blames_nobody() -> None:
    """A server that counted the requester at its own length asks it for blocks up there; if
    the requester did not get there (its state moved while the answer was on its way), its
    honest answer cannot verify against the server's roots: no blame, nothing stored, and the
    server asks again only within what the requester synced."""
    def writer_at(length: int) -> Log:
        log = Log.create(Storage.open_memory(), WRITER)  # the same log, block for block
        log.append([b"b%d" % i for i in range(length)])
        return log

    requester = replica_of(writer_at(4))
    run(LogSession(writer_at(4)), LogSession(requester))  # length 4, blocks 0..3
    server = replica_of(writer_at(8))
    server_up, writer_side = LogSession(server, eager=False), LogSession(writer_at(8))
    run(writer_side, server_up)  # length 8, no blocks
    shuttle(server_up.want(0, 4), writer_side, server_up)  # blocks 0..3, none above
    assert [i for i in range(8) if server.has(i)] == [0, 1, 2, 3]
    s_side, r_side = LogSession(server, version=3), LogSession(requester, version=3)
    assert s_side.receive(r_side.start()[0])[0] == []  # nothing it can prove below 4
    (ask,) = r_side.receive(s_side.start()[0])[0]
    served = s_side.receive(ask)[0]
    assert s_side.remote_length == 8 and kinds(served) == ["data", "range"]
    assert rep.decode_message(served[1])["start"] == 4
    # Meanwhile the requester reaches length 6 from the writer, ahead of the server's answer.
    shuttle(LogSession(requester, claims=Claims()).start(), LogSession(writer_at(6)),
            LogSession(requester, claims=Claims()))
    up = LogSession(requester, claims=Claims())
    first = LogSession(writer_at(6), version=3).start()[0]  # its sync
    shuttle(up.receive(first)[0], LogSession(writer_at(6)), up)
    assert requester.length == 6 and all(requester.has(i) for i in range(6))
    out, stored = r_side.receive(served[0])
    assert not stored and kinds(out)[0] == "sync"  # the upgrade from 4 no longer fits
    (reply,) = r_side.receive(served[1])[0]
    assert kinds([reply]) == ["blocks"]  # blocks 4..5, proven up to the requester's roots
    s_side.receive(reply)  # cannot verify against the server's roots: nobody's fault
    assert not server.has(4) and s_side.remote_length == 4
    # The requester's sync then tells the server where it really is.
    s_side.receive(out[0])
    assert s_side.remote_length == 6
