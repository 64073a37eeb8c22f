"""The version 2 block format (packs of nodes) and what packing changes for the bee: strict
decoding, addresses, fewer blocks per flush, and no more blocks per lookup than levels."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bee import MemoryLog, collect

from autobase_py.bee import Bee
from autobase_py.bee.node import (
    PACK_VERSION,
    ROOT_FLAG,
    SLOT_BITS,
    Node,
    decode_block,
    encode_body,
    encode_node,
    encode_pack,
    patch_child,
    patch_children,
)
from autobase_py.errors import DecodeError, EncodeError, LocalError

SEQ = 1000


def addr(block: int, slot: int) -> int:
    return block << SLOT_BITS | slot


keys_strategy = st.lists(st.binary(max_size=6), max_size=8, unique=True).map(sorted)


@st.composite
def packs(draw: st.DrawFn) -> tuple[list[Node], bool]:
    """Nodes for one block ``SEQ``: leaves, and internal nodes whose children are earlier
    blocks or earlier slots of this block."""
    count = draw(st.integers(1, 6))
    out: list[Node] = []
    for slot in range(count):
        keys = draw(keys_strategy)
        if slot == 0 or draw(st.booleans()):
            values = draw(st.lists(st.binary(max_size=6), min_size=len(keys), max_size=len(keys)))
            out.append(Node(keys, values, None))
            continue
        keys = keys or [b"m"]
        refs = st.one_of(
            st.builds(addr, st.integers(0, SEQ - 1), st.integers(0, 0xFFFF)),
            st.builds(addr, st.just(SEQ), st.integers(0, slot - 1)),
        )
        children = draw(st.lists(refs, min_size=len(keys) + 1, max_size=len(keys) + 1))
        out.append(Node(keys, None, list(children)))
    return out, draw(st.booleans())


@given(packs())
def test_packs_round_trip_with_addresses(pack: tuple[list[Node], bool]) -> None:
    nodes, root = pack
    block = encode_pack([encode_body(node) for node in nodes], root=root)
    back = decode_block(block, SEQ)
    assert len(back) == len(nodes)
    for slot, (got, want) in enumerate(zip(back, nodes, strict=True)):
        assert (got.keys, got.values, got.children) == (want.keys, want.values, want.children)
        assert got.seq == addr(SEQ, slot)
        assert got.root == (root and slot == len(nodes) - 1)


@given(
    st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=300, unique=True),
    st.data(),
)
def test_patched_children_equal_a_fresh_encoding(keys: list[bytes], data: st.DataObject) -> None:
    keys.sort()
    ref = st.integers(0, 2**64 - 1)
    old = Node(keys, None, data.draw(st.lists(ref, min_size=len(keys) + 1, max_size=len(keys) + 1)))
    new = Node(keys, None, data.draw(st.lists(ref, min_size=len(keys) + 1, max_size=len(keys) + 1)))
    assert patch_children(encode_body(old), new.children) == encode_body(new)  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        patch_children(encode_body(old), [*new.children[:-1], new])  # type: ignore[index,list-item]
    # One child at a time, as a 1-put flush rewrites its path.
    body = encode_body(old)
    for i, address in enumerate(new.children):  # type: ignore[arg-type]
        body = patch_child(body, len(keys), i, address)  # type: ignore[arg-type]
    assert body == encode_body(new)
    with pytest.raises(EncodeError):
        patch_child(body, len(keys), 0, new)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(packs(), st.data())
def test_damaged_packs_raise_only_decode_error(
    pack: tuple[list[Node], bool], data: st.DataObject
) -> None:
    nodes, root = pack
    block = bytearray(encode_pack([encode_body(node) for node in nodes], root=root))
    how = data.draw(st.sampled_from(["flip", "cut", "extend", "random"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(block) - 1))
        block[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del block[data.draw(st.integers(0, len(block) - 1)) :]
    elif how == "extend":
        block += data.draw(st.binary(min_size=1, max_size=4))
    else:
        block = bytearray(data.draw(st.binary(max_size=64)))
    try:
        back = decode_block(bytes(block), SEQ)
    except DecodeError:
        return
    # Whatever decodes is a well-formed pack that encodes back to exactly these bytes.
    assert block[:1] in (b"\x01", b"\x02")
    if block[0] == PACK_VERSION:
        again = encode_pack([encode_body(node) for node in back], root=back[-1].root)
        assert again == block


def test_known_bad_packs_are_rejected() -> None:
    leaf = encode_body(Node([b"a"], [b"1"], None))
    good = encode_pack([leaf], root=True)
    assert decode_block(good, 5)[0].root
    same_block_child = Node([b"m"], None, [addr(5, 0), addr(5, 1)])  # slot 1 is itself
    later_block_child = Node([b"m"], None, [addr(4, 0), addr(6, 0)])
    bad = [
        b"",
        b"\x02",
        bytes([PACK_VERSION, 0, 0, 0]),  # no nodes
        bytes([PACK_VERSION, 1]) + good[2:],  # unknown flags
        bytes([PACK_VERSION, ROOT_FLAG | 1]) + good[2:],
        bytes([3]) + good[1:],  # unknown version
        good + b"\x00",  # trailing bytes
        good[:-1],
        encode_pack([leaf, encode_body(same_block_child)], root=False),
        encode_pack([leaf, encode_body(later_block_child)], root=False),
        encode_pack([bytes([0x02, 0, 0])], root=False),  # a body kind with the root flag
        encode_pack([encode_body(Node([b"b", b"a"], [b"1", b"2"], None))], root=False),
        encode_pack([encode_body(Node([b"a", b"a"], [b"1", b"2"], None))], root=False),
        encode_pack([struct.pack("<BH", 1, 0) + struct.pack("<IH", 1, 0)], root=False),
        encode_pack([leaf + b"x"], root=False),  # a body longer than its fields
    ]
    for block in bad:
        with pytest.raises(DecodeError):
            decode_block(block, 5)
    with pytest.raises(DecodeError):
        decode_block("not bytes", 5)  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_pack([], root=True)
    with pytest.raises(EncodeError):
        encode_body(Node([b"m"], None, [Node([], [], None), 0]))


def test_version_1_blocks_decode_to_slot_0_addresses() -> None:
    inner = decode_block(encode_node(Node([b"m"], None, [3, 4]), root=True), 7)
    assert [node.seq for node in inner] == [addr(7, 0)]
    assert inner[0].children == [addr(3, 0), addr(4, 0)] and inner[0].root


async def test_a_version_1_tree_reads_and_takes_packed_flushes_on_top() -> None:
    log = MemoryLog()  # a view written before packing: one node per block
    left = Node([b"a", b"b"], [b"1", b"2"], None)
    right = Node([b"m", b"n"], [b"3", b"4"], None)
    log.blocks += [encode_node(left), encode_node(right)]
    log.blocks.append(encode_node(Node([b"m"], None, [0, 1]), root=True))
    bee = Bee(log, leaf_max=4, internal_max=4)
    assert await collect(bee.range()) == [(b"a", b"1"), (b"b", b"2"), (b"m", b"3"), (b"n", b"4")]
    batch = bee.batch()
    batch.put(b"c", b"5")
    batch.delete(b"n")
    await batch.flush()
    assert log.blocks[-1][:1] == bytes([PACK_VERSION])
    expected = [(b"a", b"1"), (b"b", b"2"), (b"c", b"5"), (b"m", b"3")]
    assert await collect(bee.range()) == expected
    assert await collect(Bee(log).range()) == expected  # a cold reader walks both formats
    assert await Bee(log).snapshot(3).get(b"n") == b"4"  # the old version is still there


async def test_child_slot_past_the_end_of_an_earlier_block_is_a_decode_error() -> None:
    log = MemoryLog()
    log.blocks.append(encode_pack([encode_body(Node([b"a"], [b"1"], None))], root=False))
    hostile = Node([b"m"], None, [addr(0, 0), addr(0, 1)])  # block 0 has only slot 0
    log.blocks.append(encode_pack([encode_body(hostile)], root=True))
    bee = Bee(log)
    assert await bee.get(b"a") == b"1"
    with pytest.raises(DecodeError):
        await bee.get(b"z")


async def test_nodes_decode_on_demand_and_a_bad_slot_fails_only_when_reached() -> None:
    log = MemoryLog()
    good = encode_body(Node([b"a"], [b"1"], None))
    bad = encode_body(Node([b"x", b"y"], [b"1", b"2"], None))
    assert bad.endswith(b"xy12")
    bad = bad[:-4] + b"yx12"  # keys out of order
    log.blocks.append(encode_pack([good, bad], root=False))
    root = Node([b"m"], None, [addr(0, 0), addr(0, 1)])
    log.blocks.append(encode_pack([encode_body(root)], root=True))
    bee = Bee(log)
    assert await bee.get(b"a") == b"1"
    with pytest.raises(DecodeError):
        await bee.get(b"z")
    with pytest.raises(DecodeError):
        decode_block(log.blocks[0], 0)  # type: ignore[arg-type]


@settings(max_examples=100)
@given(st.data())
def test_hostile_packed_trees_never_crash_or_loop(data: st.DataObject) -> None:
    """Signed but arbitrary packs: reads end with an answer or a typed error, and writing on
    top of them works."""
    log = MemoryLog()
    count = data.draw(st.integers(1, 6))
    for seq in range(count):
        bodies = []
        for slot in range(data.draw(st.integers(1, 3))):
            keys = sorted(set(data.draw(st.lists(st.binary(max_size=2), max_size=4))))
            if (seq == 0 and slot == 0) or data.draw(st.booleans()):
                bodies.append(encode_body(Node(keys, [b"v"] * len(keys), None)))
                continue
            keys = keys or [b"m"]
            ref = st.one_of(
                st.builds(addr, st.integers(0, max(0, seq - 1)), st.integers(0, 3)),
                st.builds(addr, st.just(seq), st.integers(0, max(0, slot - 1))),
            ).filter(lambda a, seq=seq, slot=slot: a < addr(seq, slot))
            refs = data.draw(st.lists(ref, min_size=len(keys) + 1, max_size=len(keys) + 1))
            bodies.append(encode_body(Node(keys, None, list(refs))))
        log.blocks.append(encode_pack(bodies, root=seq == count - 1))
    bee = Bee(log)
    probe = data.draw(st.binary(max_size=2))

    async def reads() -> None:
        await bee.get(probe)
        await collect(bee.range(gte=probe))
        await collect(bee.range(lt=probe, reverse=True))
        await bee.put(probe, b"x")
        assert await bee.get(probe) == b"x"

    with contextlib.suppress(DecodeError):  # a child slot past the end of its block
        trio.run(reads)


class CountingLog(MemoryLog):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, index: int) -> bytes:
        self.reads += 1
        return super().get(index)


async def test_random_flush_writes_few_blocks_and_lookups_touch_one_block_per_level() -> None:
    log = CountingLog()
    bee = Bee(log, leaf_max=8, internal_max=8, pack_bytes=8192)
    rng = random.Random(7)
    keys = [b"%08d" % rng.randrange(10**8) for _ in range(3000)]
    for at in range(0, len(keys), 500):
        batch = bee.batch()
        for key in keys[at : at + 500]:
            batch.put(key, bytes(40))
        await batch.flush()
    written = sum(len(decode_block(log.get(seq), seq)) for seq in range(log.length))
    assert log.appends == 6
    assert log.length * 10 < written  # packed: many nodes per block
    batch = bee.batch()
    for key in rng.sample(keys, 100):  # scattered updates: ~100 leaves rewritten
        batch.put(key, b"new")
    before = log.length
    await batch.flush()
    assert log.length - before <= 4  # 163 nodes, ~31 KB, in 8 KiB packs
    # Depth of the tree, then a cold lookup reads at most one block per level.
    cold = Bee(log)
    depth = 1
    node = cold._root(log.length)
    while node is not None and node.children is not None:
        node = cold._load(node.children[0])  # type: ignore[arg-type]
        depth += 1
    for key in rng.sample(keys, 20):
        log.reads = 0
        fresh = Bee(log)
        assert await fresh.get(key) is not None
        assert 1 <= log.reads <= depth


def test_pack_bytes_must_be_a_positive_int() -> None:
    for bad in [0, -5, 1.5, "4096"]:
        with pytest.raises(LocalError):
            Bee(MemoryLog(), pack_bytes=bad)  # type: ignore[arg-type]


async def test_one_node_per_block_when_pack_bytes_is_tiny() -> None:
    log = MemoryLog()
    bee = Bee(log, leaf_max=4, internal_max=4, pack_bytes=1)
    batch = bee.batch()
    for i in range(50):
        batch.put(b"%03d" % i, b"v")
    await batch.flush()
    assert all(len(decode_block(log.get(seq), seq)) == 1 for seq in range(log.length))
    assert log.length > 10
    assert await collect(Bee(log).range()) == [(b"%03d" % i, b"v") for i in range(50)]
