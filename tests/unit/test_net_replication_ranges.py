"""Range answers: the uncles a server computes from the values, the trimmed lists, the size
cap, and relays that owe many blocks."""

from __future__ import annotations

import pytest

from autobase_py import crypto, encoding
from autobase_py.errors import LocalError
from autobase_py.log import Log
from autobase_py.net import replication as rep
from autobase_py.net.replication import Claims, LogSession
from autobase_py.net.replication_wire import (
    RangeTree,
    pack_uncles,
    shared_uncles,
    unpack_uncles,
)
from autobase_py.storage import Storage

WRITER = crypto.key_pair(b"r" * 32)


def writer_log(blocks: int, size: int = 0) -> Log:
    log = Log.create(Storage.open_memory(), WRITER)
    pad = b"x" * size
    for start in range(0, blocks, 50):
        log.append([b"block %d" % i + pad for i in range(start, min(blocks, start + 50))])
    return log


def replica_of(log: Log) -> Log:
    return Log.replica(Storage.open_memory(), log.key)


def run(a: LogSession, b: LogSession, *, max_rounds: int = 10_000) -> int:
    """Shuttle messages between two sessions until both are quiet; the number of rounds."""
    queues = {id(a): a.start(), id(b): b.start()}
    for rounds in range(max_rounds):
        if not queues[id(a)] and not queues[id(b)]:
            return rounds
        for src, dst in ((a, b), (b, a)):
            pending, queues[id(src)] = queues[id(src)], []
            for message in pending:
                out, _ = dst.receive(message)
                queues[id(dst)] += out
    raise AssertionError("sessions did not go quiet")


@pytest.mark.parametrize("length", [1, 7, 8, 37, 100])
def test_range_tree_uncles_are_the_logs(length: int) -> None:
    log = writer_log(length)
    for start in range(length):
        for stop in {start + 1, min(length, start + 9), length}:
            tree = RangeTree(start, [log.get(i) for i in range(start, stop)])
            for index in range(start, stop):
                full = list(log.proof(index).block.nodes)  # type: ignore[union-attr]
                for count in range(len(full) + 1):
                    got = tree.uncles(index, count)
                    assert got is None or got == full[:count]
                # a later block whose shared uncles lie inside the range finds them all
                keep = shared_uncles(index, start)
                if (
                    keep is not None
                    and index - (1 << (keep - 1)) >= start
                    and index + (1 << (keep - 1)) <= stop
                ):
                    assert tree.uncles(index, keep) == full[:keep]


def test_a_range_answer_is_one_message_and_the_uncles_are_few() -> None:
    source = writer_log(300)
    replica = replica_of(source)
    mine = LogSession(replica, range_size=128)
    run(LogSession(source), mine)
    assert [replica.get(i) for i in range(300)] == [b"block %d" % i for i in range(300)]
    assert mine.blocks_received == 300
    # An answer for 128 blocks costs about two uncles per block, not log2(n).
    theirs = LogSession(source)
    answer = theirs.receive(rep.encode_range(0, 0, 128))[0][0]
    uncles = rep.decode_message(answer)["uncles"]
    assert sum(len(u) for u in uncles) // 40 <= 2 * 128 + 9


def test_answers_stop_at_the_size_cap_and_the_rest_is_asked_again() -> None:
    size = rep.MAX_ANSWER_BYTES // 5
    source = writer_log(12, size=size)
    replica = replica_of(source)
    mine = LogSession(replica, window=1, range_size=12)
    theirs = LogSession(source)
    answer = rep.decode_message(theirs.receive(rep.encode_range(0, 0, 12))[0][0])
    assert 1 <= len(answer["values"]) < 12
    run(theirs, mine)
    assert all(replica.get(i).startswith(b"block %d" % i) for i in range(12))


def test_a_sparse_peer_with_holes_serves_the_run_it_holds() -> None:
    source = writer_log(20)
    sparse = replica_of(source)
    up = LogSession(sparse, eager=False)
    run(LogSession(source), up)
    for message in up.want(4, 9):
        for reply in LogSession(source).receive(message)[0]:
            up.receive(reply)
    assert [i for i in range(20) if sparse.has(i)] == [4, 5, 6, 7, 8]
    down = LogSession(sparse)
    down.receive(rep.encode_sync(0, 0))
    served = rep.decode_message(down.receive(rep.encode_range(1, 4, 12))[0][0])
    assert (served["start"], len(served["values"])) == (4, 5)
    refused = rep.decode_message(down.receive(rep.encode_range(2, 0, 4))[0][0])
    assert refused["t"] == "none"


def test_a_relay_owing_many_blocks_announces_them_from_the_arrival_record() -> None:
    blocks = 2000
    source = writer_log(blocks)
    relay = replica_of(source)
    claims = Claims()  # the relay's sessions share it, as a Replicator's do
    up = LogSession(relay, claims, eager=False)
    run(LogSession(source), up)  # the relay knows the length, holds no block
    leaf = replica_of(source)
    down, leaf_session = LogSession(relay, claims), LogSession(leaf)
    run(down, leaf_session)  # the leaf was refused every block
    assert leaf.length == blocks and len(down._owed) == blocks
    # The relay fetches a middle stretch (not a prefix) from the writer.
    writer_side = LogSession(source)
    writer_side.receive(rep.encode_sync(relay.length, relay.fork))
    queue = up.want(700, 900)
    while queue:
        nxt = []
        for message in queue:
            for reply in writer_side.receive(message)[0]:
                nxt += up.receive(reply)[0]
        queue = nxt
    announced = [rep.decode_message(m) for m in down.local_changed()]
    assert [(m["t"], m["start"], m["end"]) for m in announced] == [("have", 700, 900)]
    assert len(down._owed) == blocks - 200


def test_owing_more_than_the_cap_resyncs_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rep, "_MAX_OWED", 10)
    source = writer_log(30)
    relay = replica_of(source)
    run(LogSession(source), LogSession(relay, eager=False))
    down = LogSession(relay)
    down.start()
    down.receive(rep.encode_range(0, 0, 8))
    assert len(down._owed) == 8 and down.local_changed() == []
    down.receive(rep.encode_range(1, 8, 16))  # would owe 16: not remembered
    assert len(down._owed) == 8
    assert [rep.decode_message(m)["t"] for m in down.local_changed()] == ["sync"]


def test_range_size_is_checked() -> None:
    log = writer_log(1)
    for bad in (0, rep.MAX_RANGE + 1):
        with pytest.raises(LocalError):
            LogSession(log, range_size=bad)


HASH = b"h" * 32


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "range", "id": 0, "start": 5, "end": 5},
        {"t": "range", "id": 0, "start": 5, "end": 4},
        {"t": "range", "id": 0, "start": 0, "end": rep.MAX_RANGE + 1},
        {"t": "range", "id": 0, "start": 0},
        {"t": "blocks", "id": 0, "fork": 0, "start": 0, "values": [], "uncles": []},
        {"t": "blocks", "id": 0, "fork": 0, "start": 0, "values": [b"a"], "uncles": []},
        {"t": "blocks", "id": 0, "fork": 0, "start": 0, "values": ["a"], "uncles": [b""]},
        {"t": "blocks", "id": 0, "fork": 0, "start": 0, "values": [b"a"], "uncles": [b"x" * 39]},
        {"t": "blocks", "id": 0, "fork": 0, "start": 0, "values": [b"a"], "uncles": [[]]},
        {"t": "blocks", "id": 0, "fork": 0, "start": 0, "values": [b"a"],
         "uncles": [b"\xff" * 8 + HASH]},  # a size past 2**53
        {"t": "blocks", "id": 0, "fork": 0, "start": 0, "values": [b"a"],
         "uncles": [(b"\x01" + bytes(7) + HASH) * 65]},  # more uncles than levels
        {"t": "blocks", "id": 0, "fork": 0, "start": 2**53, "values": [b"a"], "uncles": [b""]},
        {"t": "blocks", "id": 0, "fork": -1, "start": 0, "values": [b"a"], "uncles": [b""]},
        {"t": "blocks", "id": 0, "fork": 0, "start": 0, "values": [b"a"], "uncles": [b""],
         "x": 1},
    ],
)
def test_malformed_range_messages(obj: object) -> None:
    with pytest.raises(rep.InvalidPeerDataError):
        rep.decode_message(encoding.encode(obj))


def test_a_well_formed_blocks_message_decodes() -> None:
    uncle = b"\x05" + bytes(7) + HASH
    message = rep.encode_blocks(3, 0, 7, [b"a", b"b"], [uncle, b""])
    decoded = rep.decode_message(message)
    assert (decoded["start"], decoded["values"]) == (7, [b"a", b"b"])
    assert unpack_uncles(decoded["uncles"][0]) == [(5, HASH)]


def _stored(log: Log) -> tuple[object, ...]:
    return (log.length, log.fork, log.storage.tree_rows())


def _asking(replica: Log, source: Log, start: int, end: int) -> tuple[LogSession, bytes]:
    """A session of ``replica`` that asked for ``[start, end)``, and the source's answer."""
    mine = LogSession(replica, eager=False, range_size=rep.MAX_RANGE)
    mine.receive(rep.encode_sync(source.length, source.fork))
    (request,) = mine.want(start, end)
    (answer,), _ = LogSession(source).receive(request)
    return mine, answer


@pytest.mark.parametrize(("start", "end"), [(0, 128), (5, 77), (63, 65), (100, 101), (1, 150)])
def test_any_flipped_bit_in_a_blocks_answer_is_refused_and_stores_nothing(
    start: int, end: int
) -> None:
    source = writer_log(150)
    replica = replica_of(source)
    replica.apply_proof(source.proof(None, upgrade_from=0))
    before = _stored(replica)
    _, answer = _asking(replica, source, start, end)
    good = rep.decode_message(answer)
    assert (good["start"], len(good["values"])) == (start, end - start)

    def refused(values: list[bytes], uncles: list[bytes]) -> None:
        mine, _ = _asking(replica, source, start, end)
        bad = rep.encode_blocks(good["id"], good["fork"], start, values, uncles)
        with pytest.raises(rep.InvalidPeerDataError):
            mine.receive(bad)
        assert _stored(replica) == before

    def flip(data: bytes, bit: int) -> bytes:
        out = bytearray(data)
        out[bit // 8 % len(out)] ^= 1 << (bit % 8)
        return bytes(out)

    flips = 0
    for k, value in enumerate(good["values"]):
        values = list(good["values"])
        values[k] = flip(value, 3 * k)
        refused(values, good["uncles"])
        flips += 1
    for k, packed in enumerate(good["uncles"]):
        for entry in range(len(packed) // 40):
            # one bit of the size (low bytes, so it still decodes) or of the hash, alternately
            bit = (entry * 40 + (entry + k) % 3) * 8 + k % 8 if (entry + k) % 2 else (
                (entry * 40 + 8 + (7 * k + entry) % 32) * 8 + entry % 8)
            uncles = list(good["uncles"])
            uncles[k] = flip(packed, bit)
            refused(good["values"], uncles)
            flips += 1
    assert flips > end - start
    mine, answer = _asking(replica, source, start, end)
    mine.receive(answer)
    assert [replica.get(i) for i in range(start, end)] == [
        source.get(i) for i in range(start, end)
    ]
    assert mine.blocks_received == end - start


def test_two_different_uncles_for_one_node_are_refused() -> None:
    source = writer_log(40)
    replica = replica_of(source)
    replica.apply_proof(source.proof(None, upgrade_from=0))
    mine, answer = _asking(replica, source, 8, 12)
    good = rep.decode_message(answer)
    uncles = list(good["uncles"])
    # block 10 carries one uncle more than it shares: the node over blocks 12-15, which block
    # 8's full list already holds, with another hash
    entries = [unpack_uncles(u) for u in uncles]
    entries[2] = [*entries[2], (entries[0][2][0], bytes(32))]
    bad = rep.encode_blocks(good["id"], good["fork"], 8, good["values"],
                            [pack_uncles(e) for e in entries])
    with pytest.raises(rep.InvalidPeerDataError, match="two different uncles"):
        mine.receive(bad)
    assert not any(replica.has(i) for i in range(40))
