"""Properties of the tuple key encoding and of the node block decoder."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from autobase_py.bee.keys import (
    decode_tuple,
    encode_element,
    encode_tuple,
    prefix_range,
    tuple_sort_key,
)
from autobase_py.bee.node import Node, decode_node, encode_node
from autobase_py.errors import DecodeError, EncodeError

# Small alphabets make equal prefixes, embedded zero bytes and 0xff likely.
elements = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.sampled_from([0, 1, 255, 256, 2**32, 2**64 - 1]),
    st.binary(max_size=4).map(lambda b: bytes(x % 3 * 0x7F for x in b)),
    st.text(alphabet="\x00a\xff\u20ac\U0001f600", max_size=4),
)
tuples = st.lists(elements, max_size=4).map(tuple)


@given(tuples, tuples)
def test_encoding_preserves_tuple_order(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    ka, kb = tuple_sort_key(a), tuple_sort_key(b)
    ea, eb = encode_tuple(a), encode_tuple(b)
    assert (ka < kb) == (ea < eb)
    assert (ka == kb) == (ea == eb)


@given(tuples)
def test_encoding_round_trips(t: tuple) -> None:  # type: ignore[type-arg]
    assert decode_tuple(encode_tuple(t)) == t


@given(tuples, st.lists(tuples, max_size=20))
def test_prefix_range_selects_exactly_the_tuples_with_that_prefix(
    prefix: tuple, others: list[tuple]  # type: ignore[type-arg]
) -> None:
    bounds = prefix_range(prefix)
    candidates = [*others, prefix, (*prefix, 0), (*prefix, b""), (*prefix, "")]
    for t in candidates:
        key = encode_tuple(t)
        inside = bounds["gte"] <= key < bounds["lt"]
        assert inside == (t[: len(prefix)] == prefix and len(t) >= len(prefix)), (t, prefix)


@given(st.binary(max_size=40))
def test_decode_tuple_accepts_only_canonical_encodings(data: bytes) -> None:
    try:
        t = decode_tuple(data)
    except DecodeError:
        return
    assert encode_tuple(t) == data


def test_decode_tuple_rejects_known_garbage() -> None:
    for data in [b"\x10", b"\x10\x09" + b"\x00" * 9, b"\x10\x01\x00", b"\x20abc", b"\x99",
                 b"\x30\xff\xfe\x00"]:
        try:
            decode_tuple(data)
        except DecodeError:
            continue
        raise AssertionError(f"{data!r} decoded")


class _Str(str):
    pass


class _Int(int):
    pass


class _Bytes(bytes):
    pass


def _loose(element: int | bytes | str, how: int) -> object:
    """The same element as a subclass or another accepted byte-like type (the general path)."""
    if isinstance(element, str):
        return _Str(element)
    if isinstance(element, bytes):
        return (_Bytes(element), bytearray(element), memoryview(element))[how % 3]
    return _Int(element)


@given(tuples, st.integers(0, 2))
def test_fast_path_and_general_path_encode_identically(t: tuple, how: int) -> None:  # type: ignore[type-arg]
    # exact types take the fast path; subclasses and bytearray/memoryview take the general one
    loose = [_loose(e, how) for e in t]
    assert encode_tuple(loose) == encode_tuple(t)  # type: ignore[arg-type]
    assert encode_tuple(list(t)) == encode_tuple(t)
    for e, x in zip(t, loose, strict=True):
        assert encode_element(x) == encode_element(e)  # type: ignore[arg-type]


def test_encoder_rejects_what_it_cannot_order() -> None:
    for bad in [True, False, -1, 2**64, "\ud800", 1.5, None, (1,)]:
        try:
            encode_tuple((1, bad))  # type: ignore[arg-type]
        except EncodeError:
            continue
        raise AssertionError(f"{bad!r} encoded")
    try:
        encode_tuple((_Int(-1),))
    except EncodeError:
        pass
    else:
        raise AssertionError("negative int subclass encoded")
    assert encode_tuple((255, 256)) == b"\x10\x01\xff\x10\x02\x01\x00"
    assert encode_tuple((0, 2**64 - 1)) == b"\x10\x00\x10\x08" + b"\xff" * 8
    assert encode_tuple(("a\x00", b"\x00")) == b"\x30a\x00\xff\x00\x20\x00\xff\x00"


nodes = st.one_of(
    st.lists(st.binary(max_size=6), max_size=8, unique=True).flatmap(
        lambda ks: st.lists(st.binary(max_size=6), min_size=len(ks), max_size=len(ks)).map(
            lambda vs: Node(sorted(ks), vs, None)
        )
    ),
    st.lists(st.binary(max_size=6), min_size=1, max_size=8, unique=True).flatmap(
        lambda ks: st.lists(
            st.integers(0, 999), min_size=len(ks) + 1, max_size=len(ks) + 1
        ).map(lambda cs: Node(sorted(ks), None, list(cs)))
    ),
)


@given(nodes, st.booleans())
def test_node_blocks_round_trip(node: Node, root: bool) -> None:
    block = encode_node(node, root=root)
    back = decode_node(block, 1000)
    assert (back.keys, back.values, back.children) == (node.keys, node.values, node.children)
    assert back.root == root


@settings(max_examples=300)
@given(nodes, st.data())
def test_damaged_node_blocks_raise_only_decode_error(node: Node, data: st.DataObject) -> None:
    block = bytearray(encode_node(node))
    how = data.draw(st.sampled_from(["truncate", "flip", "append", "random"]))
    if how == "truncate":
        damaged = bytes(block[: data.draw(st.integers(0, len(block) - 1))])
    elif how == "flip":
        i = data.draw(st.integers(0, len(block) - 1))
        block[i] ^= 1 << data.draw(st.integers(0, 7))
        damaged = bytes(block)
    elif how == "append":
        damaged = bytes(block) + data.draw(st.binary(min_size=1, max_size=4))
    else:
        damaged = data.draw(st.binary(max_size=64))
    try:
        back = decode_node(damaged, 1000)
    except DecodeError:
        return
    # Whatever still decodes must be a well-formed node that re-encodes to the same bytes.
    assert encode_node(back, root=back.root) == damaged


def test_node_decoder_rejects_shapes_it_must_not_trust() -> None:
    good_leaf = encode_node(Node([b"a", b"b"], [b"1", b"2"], None))
    internal = encode_node(Node([b"m"], None, [3, 4]))
    bad = [
        b"",
        good_leaf[:-1],  # truncated value
        good_leaf + b"x",  # trailing byte
        good_leaf[:2] + b"\xff\xff" + good_leaf[4:],  # key count past the header
        b"\x02" + good_leaf[1:],  # unknown format version
        good_leaf[:1] + b"\x07" + good_leaf[2:],  # unknown kind
        encode_node(Node([b"b", b"a"], [b"1", b"2"], None)),  # keys out of order
        encode_node(Node([b"a", b"a"], [b"1", b"2"], None)),  # duplicate keys
        encode_node(Node([], None, [1])),  # internal without keys
        good_leaf[:1] + b"\x04" + good_leaf[2:],  # unknown kind flag
    ]
    for block in bad:
        try:
            decode_node(block, 10)
        except DecodeError:
            continue
        raise AssertionError(f"{block!r} decoded")
    try:
        decode_node(internal, 4)  # a child that is not an earlier block (cycle guard)
    except DecodeError:
        pass
    else:
        raise AssertionError("child >= own index accepted")
    assert decode_node(internal, 5).children == [3, 4]
