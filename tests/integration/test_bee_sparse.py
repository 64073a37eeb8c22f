"""Sparse replicas on real logs: a replica filled only by proofs from the writer (through the
proof wire encoding) answers like the writer, fetches only the blocks its reads touch, and
rejects a tampered block with the log's typed verification error."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from autobase_py.bee import Bee, encode_tuple, prefix_range
from autobase_py.errors import VerificationError
from autobase_py.log import Log, Proof, decode_proof, encode_proof
from autobase_py.store import Store


class WriterSource:
    """Serves proofs from the writer's log over a simulated wire (encode, then decode)."""

    def __init__(self, writer: Log) -> None:
        self.writer = writer
        self.requests: list[int] = []
        self.tamper = False

    async def __call__(self, index: int, length: int) -> Proof:
        self.requests.append(index)
        proof = decode_proof(encode_proof(self.writer.proof(index)))
        if self.tamper:
            assert proof.block is not None
            value = bytearray(proof.block.value)
            value[len(value) // 2] ^= 0x01
            proof = dataclasses.replace(
                proof, block=dataclasses.replace(proof.block, value=bytes(value))
            )
        return proof


def upgrade(replica: Log, writer: Log) -> None:
    """What replication does: bring the replica's signed length up to the writer's."""
    start = replica.length if replica.fork == writer.fork else 0
    replica.apply_proof(decode_proof(encode_proof(writer.proof(None, upgrade_from=start))))


async def entries(it: Any) -> list[tuple[bytes, bytes]]:
    return [item async for item in it]


@pytest.fixture
def pair(tmp_path: Path) -> Any:
    writer_store = Store.open(tmp_path / "writer")
    replica_store = Store.open(tmp_path / "replica")
    yield writer_store, replica_store
    writer_store.close()
    replica_store.close()


async def test_sparse_replica_matches_writer_and_fetches_only_what_it_touches(pair: Any) -> None:
    writer_store, replica_store = pair
    wlog = writer_store.get(name="view")
    # Small packs: the tree spans many blocks, so fetching only what a read touches shows.
    wbee = Bee(wlog, leaf_max=16, internal_max=16, pack_bytes=512)
    batch = wbee.batch()
    for i in range(2000):
        batch.put(encode_tuple(["entry", i]), b"value %d" % i)
    await batch.flush()

    rlog = replica_store.get(key=wlog.key)
    assert not rlog.writable
    upgrade(rlog, wlog)
    source = WriterSource(wlog)
    rbee = Bee(rlog, source=source)
    assert rbee.version == wbee.version
    assert not any(rlog.has(i) for i in range(rlog.length))

    key = encode_tuple(["entry", 1234])
    assert await rbee.get(key) == await wbee.get(key) == b"value 1234"
    depth = rbee.blocks_fetched
    assert 2 <= depth <= 4  # root, internal levels, one leaf: O(log n)
    stored = [i for i in range(rlog.length) if rlog.has(i)]
    assert sorted(source.requests) == stored and len(stored) == depth

    # A second lookup shares the upper levels: it fetches at most the lower path.
    assert await rbee.get(encode_tuple(["entry", 1])) == b"value 1"
    assert rbee.blocks_fetched < 2 * depth

    window = prefix_range(["entry"])
    low, high = encode_tuple(["entry", 500]), encode_tuple(["entry", 540])
    assert await entries(rbee.range(gte=low, lt=high)) == await entries(
        wbee.range(gte=low, lt=high)
    )
    assert await entries(rbee.range(reverse=True, limit=5, **window)) == await entries(
        wbee.range(reverse=True, limit=5, **window)
    )
    assert rbee.blocks_fetched < rlog.length // 4  # still sparse

    # The writer moves on (and rolls back); the replica follows its signed length.
    before_change = wbee.version
    await wbee.put(key, b"changed")
    upgrade(rlog, wlog)
    assert await rbee.get(key) == b"changed"
    wlog.truncate(before_change)
    await wbee.put(key, b"after rollback")
    upgrade(rlog, wlog)
    assert rlog.fork == wlog.fork
    assert await rbee.get(key) == b"after rollback"
    assert await rbee.get(encode_tuple(["entry", 7])) == b"value 7"


async def test_tampered_block_from_source_is_rejected_with_typed_error(pair: Any) -> None:
    writer_store, replica_store = pair
    wlog = writer_store.get(name="view")
    wbee = Bee(wlog, leaf_max=8, internal_max=8)
    batch = wbee.batch()
    for i in range(300):
        batch.put(b"k%04d" % i, b"v%d" % i)
    await batch.flush()
    rlog = replica_store.get(key=wlog.key)
    upgrade(rlog, wlog)
    source = WriterSource(wlog)
    source.tamper = True
    rbee = Bee(rlog, source=source)
    with pytest.raises(VerificationError):
        await rbee.get(b"k0100")
    assert not any(rlog.has(i) for i in range(rlog.length))  # nothing unverified was stored
    source.tamper = False
    assert await rbee.get(b"k0100") == b"v100"


async def test_replica_without_source_reports_missing_blocks(pair: Any) -> None:
    from autobase_py.errors import BlockNotAvailableError, NotWritableError

    writer_store, replica_store = pair
    wlog = writer_store.get(name="view")
    await Bee(wlog).put(b"a", b"1")
    rlog = replica_store.get(key=wlog.key)
    upgrade(rlog, wlog)
    rbee = Bee(rlog)
    with pytest.raises(BlockNotAvailableError):
        await rbee.get(b"a")
    with pytest.raises(NotWritableError):
        await rbee.put(b"b", b"2")
