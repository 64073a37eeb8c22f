"""Live following with one hop (wire version 4): the writer holds a replica's ``follow`` and
answers it, once it grows, with a ``tip`` (the upgrade plus the new blocks); relays and
version-3 peers; forks; races; and every way a tip can lie."""

from __future__ import annotations

from typing import Any

import pytest
from test_net_replication import shuttle  # the same sans-IO ping-pong of two sessions

from autobase_py import crypto
from autobase_py.log import Log, Proof, decode_proof, encode_proof
from autobase_py.net import replication as rep
from autobase_py.net.replication import Claims, InvalidPeerDataError, LogSession
from autobase_py.storage import Storage

WRITER = crypto.key_pair(b"f" * 32)


def writer_log(blocks: int) -> Log:
    log = Log.create(Storage.open_memory(), WRITER)
    log.append([b"block %d" % i for i in range(blocks)])
    return log


def replica_of(log: Log) -> Log:
    return Log.replica(Storage.open_memory(), log.key)


def kinds(messages: list[bytes]) -> list[str]:
    return [rep.decode_message(m)["t"] for m in messages]


def run(a: LogSession, b: LogSession) -> None:
    """Shuttle messages between two sessions until both are quiet."""
    queues = {id(a): a.start(), id(b): b.start()}
    for _ in range(10_000):
        if not queues[id(a)] and not queues[id(b)]:
            return
        for src, dst in ((a, b), (b, a)):
            pending, queues[id(src)] = queues[id(src)], []
            for message in pending:
                queues[id(dst)] += dst.receive(message)[0]
    raise AssertionError("sessions did not go quiet")


def following(blocks: int) -> tuple[Log, Log, LogSession, LogSession]:
    """A writer of ``blocks`` blocks and a caught-up replica whose follow the writer holds."""
    source = writer_log(blocks)
    replica = replica_of(source)
    theirs, mine = LogSession(source), LogSession(replica)
    run(theirs, mine)
    assert replica.length == blocks and mine.following and theirs.holding
    assert mine.inflight == 0 and mine.done  # a held follow is not work in flight
    return source, replica, theirs, mine


def tip_parts(message: bytes) -> dict[str, Any]:
    return rep.decode_message(message)


# -- the honest path -------------------------------------------------------------------------


def test_a_chunk_arrives_with_its_upgrade_in_one_message_and_no_sync() -> None:
    source, replica, theirs, mine = following(10)
    source.append([b"chunk %d" % i for i in range(100)])
    (tip,) = theirs.local_changed()
    assert kinds([tip]) == ["tip"] and theirs.tips_sent == 1 and not theirs.holding
    assert theirs.remote_length == 110  # counted there, as for an upgrade it served
    out, stored = mine.receive(tip)
    assert stored and replica.length == 110
    assert all(replica.get(10 + i) == b"chunk %d" % i for i in range(100))
    assert mine.claims.contiguous == 110 and mine.claims.arrivals[-1] == (10, 110)
    assert (mine.remote_length, mine.tips_received, mine.blocks_received) == (110, 1, 110)
    assert kinds(out) == ["follow"]  # nothing to ask, no sync: just the next follow
    assert theirs.receive(out[0]) == ([], False) and theirs.holding
    assert theirs.local_changed() == []  # nothing new: no sync, no tip


def test_no_sync_goes_out_while_the_next_follow_is_on_its_way() -> None:
    source, replica, theirs, mine = following(10)
    source.append([b"a"])
    (tip,) = theirs.local_changed()
    source.append([b"b"])
    assert theirs.local_changed() == []  # the replica follows again: its tip will tell
    (follow,) = mine.receive(tip)[0]
    (tip,) = theirs.receive(follow)[0]  # answered at once, from 11 to 12
    (follow,), stored = mine.receive(tip)
    assert stored and replica.get(11) == b"b"
    source.append([b"c"])
    (tip,) = theirs.receive(follow)[0]
    source.truncate(5)  # a new fork is told at once, follow or not
    assert kinds(theirs.local_changed()) == ["sync"]


def test_a_follow_from_behind_is_answered_at_once() -> None:
    source, replica, theirs, mine = following(5)
    theirs.release()  # the session ends; a new one starts after the writer grew
    source.append([b"x", b"y"])
    theirs, mine = LogSession(source), LogSession(replica, claims=Claims())
    run(theirs, mine)
    assert replica.length == 7 and replica.get(6) == b"y" and theirs.holding


def test_a_tip_carries_at_most_its_cap_and_the_rest_comes_in_ranges() -> None:
    source, replica, theirs, mine = following(3)
    source.append([b"v%d" % i for i in range(rep.TIP_BLOCKS + 300)])
    (tip,) = theirs.local_changed()
    assert len(tip_parts(tip)["values"]) == rep.TIP_BLOCKS
    out, stored = mine.receive(tip)
    assert stored and replica.length == rep.TIP_BLOCKS + 303
    assert kinds(out) == ["range", "range", "range", "follow"]
    shuttle(out, theirs, mine)
    assert all(replica.has(i) for i in range(replica.length))


def test_a_tip_stops_growing_past_the_answer_byte_cap() -> None:
    source, replica, theirs, mine = following(3)
    big = 300_000
    source.append([bytes([i]) * big for i in range(6)])
    (tip,) = theirs.local_changed()
    values = tip_parts(tip)["values"]
    assert len(values) == rep.MAX_ANSWER_BYTES // big + 1  # stops at the first past the cap
    out, stored = mine.receive(tip)
    assert stored and replica.length == 9
    shuttle(out, theirs, mine)
    assert all(replica.get(3 + i) == bytes([i]) * big for i in range(6))


def test_an_upgrade_within_a_root_boundary_needs_no_uncles() -> None:
    # From 4 to 6: the new blocks are a whole root of 6, so the tip has values and no nodes.
    source, replica, theirs, mine = following(4)
    source.append([b"e", b"f"])
    (tip,) = theirs.local_changed()
    assert tip_parts(tip)["nodes"] == b"" and len(tip_parts(tip)["values"]) == 2
    assert mine.receive(tip)[1] and replica.get(5) == b"f"


def test_a_writer_that_truncates_lets_the_follow_go_and_the_new_fork_is_followed() -> None:
    source, replica, theirs, mine = following(20)
    source.truncate(15)
    source.append([b"fork one %d" % i for i in range(10)])
    out = theirs.local_changed()
    assert kinds(out) == ["none", "sync"] and not theirs.holding
    shuttle(out, mine, theirs)
    assert (replica.length, replica.fork) == (25, 1) and replica.get(24) == b"fork one 9"
    assert mine.following and theirs.holding  # following again, on the new fork
    source.append([b"after"])
    assert mine.receive(theirs.local_changed()[0])[1] and replica.get(25) == b"after"


def test_a_session_that_ends_gives_its_follow_back() -> None:
    _, _, _, mine = following(3)
    assert mine.claims.following == 1
    mine.release()
    assert mine.claims.following == 0 and not mine.following


# -- relays and the other sessions -------------------------------------------------------------


def test_a_relay_says_none_once_and_is_then_asked_the_old_way() -> None:
    source = writer_log(8)
    relay = replica_of(source)
    run(LogSession(source), LogSession(relay))
    replica = replica_of(source)
    run(LogSession(source), LogSession(replica))
    serving, fetching = LogSession(relay), LogSession(replica, claims=Claims())
    run(serving, fetching)
    assert not fetching.following and not serving.holding  # "none": it is not the writer
    source.append([b"new"])
    run(LogSession(source), LogSession(relay))  # the relay gets it
    out = serving.local_changed()
    assert kinds(out) == ["sync"]
    asks = fetching.receive(out[0])[0]
    assert kinds(asks) == ["request"]  # an upgrade (with the block), no follow again
    shuttle(asks, serving, fetching)
    assert replica.get(8) == b"new"


def test_no_upgrade_is_asked_of_a_relay_while_the_writer_holds_a_follow() -> None:
    source, replica, theirs, mine = following(6)
    relay = replica_of(source)
    run(LogSession(source), LogSession(relay))
    source.append([b"seven"])
    run(LogSession(source), LogSession(relay))  # the relay is ahead of us now
    serving = LogSession(relay)
    other = LogSession(replica, claims=mine.claims)
    asks: list[bytes] = []
    for message in serving.start():
        asks += other.receive(message)[0]
    assert "request" not in kinds(asks)  # the writer's tip is coming
    assert mine.receive(theirs.local_changed()[0])[1] and replica.get(6) == b"seven"


# -- version 3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("writer_version", "replica_version"), [(3, 4), (4, 3)])
def test_a_version_3_end_replicates_live_without_follows(
    writer_version: int, replica_version: int
) -> None:
    source = writer_log(5)
    replica = replica_of(source)
    theirs = LogSession(source, version=writer_version)
    mine = LogSession(replica, version=replica_version)
    sent: list[str] = []

    def receive(session: LogSession, message: bytes) -> list[bytes]:
        sent.append(rep.decode_message(message)["t"])
        return session.receive(message)[0]

    queues = {id(theirs): theirs.start(), id(mine): mine.start()}
    for round_ in range(200):
        if round_ % 10 == 0 and source.length < 12:
            source.append([b"live %d" % source.length])
            queues[id(theirs)] += theirs.local_changed()
        for src, dst in ((theirs, mine), (mine, theirs)):
            pending, queues[id(src)] = queues[id(src)], []
            for message in pending:
                queues[id(dst)] += receive(dst, message)
    assert replica.length == 12 and all(replica.has(i) for i in range(12))
    assert "follow" not in sent and "tip" not in sent


def test_a_version_3_session_drops_follow_and_tip_as_malformed() -> None:
    session = LogSession(writer_log(3), version=3)
    with pytest.raises(InvalidPeerDataError, match="version 3"):
        session.receive(rep.encode_follow(0, 3, 0))
    with pytest.raises(InvalidPeerDataError, match="version 3"):
        session.receive(rep.encode_tip(0, b"", [], b""))
    assert session.receive(rep.VERSION_MARK) == ([], False)  # an ordinary "have" to it


# -- the server's side -------------------------------------------------------------------------


def test_only_the_writer_holds_follows_and_only_one() -> None:
    source = writer_log(4)
    writer_side = LogSession(source)
    assert writer_side.receive(rep.encode_follow(0, 4, 0)) == ([], False)
    with pytest.raises(InvalidPeerDataError, match="second follow"):
        writer_side.receive(rep.encode_follow(1, 4, 0))
    relay = replica_of(source)
    run(LogSession(source), LogSession(relay))
    for follow in (rep.encode_follow(0, 4, 0), rep.encode_follow(1, 4, 0)):
        assert kinds(LogSession(relay).receive(follow)[0]) == ["none"]
    for length, fork in ((0, 0), (5, 0), (4, 1)):  # from 0, past us, another fork
        assert kinds(LogSession(source).receive(rep.encode_follow(7, length, fork))[0]) == [
            "none"
        ]


# -- races and lies ----------------------------------------------------------------------------


def test_a_tip_that_arrives_after_the_replica_moved_is_dropped_without_blame() -> None:
    source, replica, theirs, mine = following(10)
    source.append([b"a", b"b"])
    (tip,) = theirs.local_changed()
    source.append([b"c"])
    side = LogSession(replica, claims=Claims())  # another peer moves the replica first
    shuttle(side.receive(LogSession(source, version=3).start()[0])[0], LogSession(source), side)
    assert replica.length == 13
    out, stored = mine.receive(tip)
    assert not stored and replica.length == 13 and mine.remote_length == 12
    # its sync and next follow keep both sides in agreement
    assert kinds(out) == ["sync", "follow"]
    shuttle(out, theirs, mine)
    assert theirs.remote_length == 13 and theirs.holding


def test_a_sync_that_crossed_the_held_follow_keeps_the_sides_in_agreement() -> None:
    source, replica, theirs, mine = following(10)
    side = LogSession(replica, claims=Claims())
    source.append([b"k"])
    shuttle(side.receive(LogSession(source, version=3).start()[0])[0], LogSession(source), side)
    (sync,) = mine.local_changed()  # the replica tells the writer it is at 11 now
    assert rep.decode_message(sync)["length"] == 11
    source.append([b"l"])
    (tip,) = theirs.local_changed()  # the writer answers from 10 before the sync arrives
    assert theirs.remote_length == 12  # it counts the replica there ...
    theirs.receive(sync)
    assert theirs.remote_length == 11  # ... until the sync says otherwise
    out, stored = mine.receive(tip)
    assert not stored  # from 10: no longer fits
    shuttle(out, theirs, mine)
    assert replica.length == 12 and theirs.remote_length == 12


def lie(tip: bytes, **changes: Any) -> bytes:
    msg = rep.decode_message(tip)
    msg.update(changes)
    return rep.encode_tip(msg["id"], msg["proof"], msg["values"], msg["nodes"])


def flipped_signature(raw: bytes) -> bytes:
    proof = decode_proof(raw)
    assert proof.upgrade is not None
    sig = bytearray(proof.upgrade.signature)
    sig[0] ^= 1
    upgrade = type(proof.upgrade)(
        proof.upgrade.start, proof.upgrade.length, proof.upgrade.nodes, bytes(sig)
    )
    return encode_proof(Proof(proof.fork, None, upgrade))


@pytest.mark.parametrize(
    "how",
    ["value", "missing value", "extra value", "node", "no nodes", "signature", "start",
     "with block", "no upgrade", "no growth", "past the upgrade", "garbage proof", "fork"],
)
def test_every_lying_tip_is_invalid_peer_data_and_nothing_is_stored(how: str) -> None:
    source, replica, theirs, mine = following(9)
    source.append([b"t%d" % i for i in range(7)])
    (tip,) = theirs.local_changed()
    msg = rep.decode_message(tip)
    values, raw = list(msg["values"]), msg["proof"]
    proof = decode_proof(raw)
    assert proof.upgrade is not None
    if how == "value":
        values[3] = b"forged"
        forged = lie(tip, values=values)
    elif how == "missing value":
        forged = lie(tip, values=values[:-1])
    elif how == "extra value":
        forged = lie(tip, values=[*values, b"more"])
    elif how == "node":
        nodes = bytearray(msg["nodes"])
        nodes[-1] ^= 1
        forged = lie(tip, nodes=bytes(nodes))
    elif how == "no nodes":
        forged = lie(tip, nodes=b"")
    elif how == "signature":
        forged = lie(tip, proof=flipped_signature(raw))
    elif how == "start":
        forged = lie(tip, proof=encode_proof(source.proof(None, 8)), values=values)
    elif how == "with block":
        forged = lie(tip, proof=encode_proof(source.proof(9, 9)))
    elif how == "no upgrade":
        forged = lie(tip, proof=encode_proof(Proof(0, None, None)), values=[], nodes=b"")
    elif how == "no growth":  # an upgrade from 9 to 9 says nothing
        forged = lie(tip, proof=encode_proof(writer_log(9).proof(None, 9)), values=[], nodes=b"")
    elif how == "past the upgrade":
        smaller = Log.create(Storage.open_memory(), WRITER)
        smaller.append([b"block %d" % i for i in range(9)] + [b"t0", b"t1"])
        forged = lie(tip, proof=encode_proof(smaller.proof(None, 9)))  # to 11, 7 values
    elif how == "garbage proof":
        forged = lie(tip, proof=b"\xff" * 10)
    else:
        forged = lie(tip, proof=encode_proof(Proof(1, None, proof.upgrade)))
    with pytest.raises(InvalidPeerDataError):
        mine.receive(forged)
    assert replica.length == 9 and not replica.has(9)


def test_a_tip_or_a_follow_answer_of_the_wrong_kind_is_invalid() -> None:
    source, _, theirs, mine = following(9)
    follow_id = next(iter(mine._inflight))
    with pytest.raises(InvalidPeerDataError, match="does not answer a follow"):
        mine.receive(rep.encode_data(follow_id, encode_proof(source.proof(None, 9))))
    source, _, theirs, mine = following(9)
    source.append([b"x"])
    (tip,) = theirs.local_changed()
    with pytest.raises(InvalidPeerDataError, match="not pending"):
        mine.receive(lie(tip, id=999))
    sparse = LogSession(replica_of(source), eager=False)
    (upgrade,) = sparse.receive(rep.encode_sync(10, 0))[0]
    upgrade_id = rep.decode_message(upgrade)["id"]
    with pytest.raises(InvalidPeerDataError, match="only a follow"):
        sparse.receive(lie(tip, id=upgrade_id))
