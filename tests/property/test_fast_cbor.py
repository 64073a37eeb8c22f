"""The Python CBOR encoder and the oplog block fast paths against their references.

* ``encoding``'s encoder must give exactly ``cbor2.dumps(value, canonical=True)`` for every
  value (or fail the same way), and ``decode`` must behave exactly as it did when it ran the
  type walk and re-encoded with cbor2 (``reference_decode`` below keeps that version).
* ``encode_block`` must give exactly the generic canonical encoding of the block's map, and
  ``decode_block`` (fast parse, fallback) must agree with the checked generic path on valid,
  mutated and random input: the same block, or a DecodeError with the same message.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from autobase_py import encoding
from autobase_py.base import oplog
from autobase_py.base.checkpoint import CheckpointSignature
from autobase_py.base.oplog import OplogBlock, decode_block, encode_block
from autobase_py.errors import DecodeError, EncodeError

# Integers on both sides of every CBOR length boundary, and of the 64-bit range.
BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
boundary_uints = st.sampled_from(BOUNDARIES) | st.integers(min_value=0, max_value=2**64 - 1)
all_ints = st.one_of(
    boundary_uints,
    st.sampled_from(BOUNDARIES).map(lambda n: -1 - n),
    st.sampled_from([2**64, -(2**64) - 1, 2**70, -(2**70)]),
    st.integers(),
)
# Sizes on both sides of the length boundaries (65536 bytes makes a 4-byte length head).
sizes = st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536]) | st.integers(0, 300)
big_binary = sizes.map(lambda n: bytes(i % 251 for i in range(n)))
texts = st.text(max_size=40) | sizes.map(lambda n: "é" * (n // 2))


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


scalars = st.one_of(
    st.none(),
    st.booleans(),
    all_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=40),
    big_binary,
    texts,
    st.just(Color.RED),
    st.just(Name("v")),
    st.just(bytearray(b"ab")),
)
keys = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["v", "heads", "batch", "value", "ckpt", "lin", "epoch"]),
    all_ints,
    st.binary(max_size=4),
    st.booleans(),
    st.none(),
    st.tuples(st.integers(0, 3)),
    st.just(Name("v")),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=6).map(tuple),
        st.dictionaries(keys, inner, max_size=6),
        st.dictionaries(st.text(max_size=4), inner, max_size=4).map(OrderedDict),
    ),
    max_leaves=40,
)


def deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value] if levels % 2 else {"k": value}
    return value


def reference_dumps(value: Any) -> bytes | type[Exception]:
    try:
        return bytes(cbor2.dumps(value, canonical=True))
    except Exception:
        return Exception


@given(values)
@example(deep(encoding.MAX_DEPTH - 1))
@example(deep(encoding.MAX_DEPTH))
@example(deep(encoding.MAX_DEPTH + 1))
@example(deep(200))
@example("\ud800")  # a lone surrogate cannot be UTF-8
@example({True: 1, 2: 0, None: 3})  # a bool key and an int key, a null key
@example({"a": 1.5, "b": float("nan")})
@example([b"x" * 23, b"x" * 24, b"x" * 255, b"x" * 256, b"x" * 65535, b"x" * 65536])
@example(["x" * 23, "x" * 24, "é" * 128, "x" * 256, 255, 256, -256, -257, 2**32, -(2**32) - 1])
@example({"k" * 300: b"x" * 300, "": 2**64 - 1, "é": -(2**64)})
def test_python_encoder_is_cbor2_canonical(value: Any) -> None:
    expected = reference_dumps(value)
    if expected is Exception:
        with pytest.raises(EncodeError):
            encoding.encode_trusted(value)
    else:
        assert encoding.encode_trusted(value) == expected


def reference_encode(value: Any) -> tuple[str, Any]:
    """``encoding.encode`` before the Python encoder: the type walk, then cbor2."""
    if isinstance(value, bytearray):
        value = bytes(value)
    try:
        encoding._check(value, 0, EncodeError)
    except EncodeError as exc:
        return ("error", exc.message)
    try:
        return ("ok", bytes(cbor2.dumps(value, canonical=True)))
    except Exception:
        return ("error", "cannot encode")


@given(values)
@example(deep(encoding.MAX_DEPTH))
@example(deep(encoding.MAX_DEPTH + 1))
@example({b"k": 1})  # a bytes key: refused by encode, fine for encode_trusted
@example(bytearray(b"ab"))
def test_encode_behaves_as_before(value: Any) -> None:
    try:
        got: tuple[str, Any] = ("ok", encoding.encode(value))
    except EncodeError as exc:
        got = ("error", "cannot encode" if exc.message.startswith("cannot encode") else exc.message)
    assert got == reference_encode(value)


@given(st.dictionaries(st.sampled_from(["v", "heads", "batch", "value", "x", "yy"]), all_ints,
                       min_size=2), st.randoms(use_true_random=False))
def test_remembered_key_orders_never_change_the_bytes(obj: dict[str, int], rnd: Any) -> None:
    items = list(obj.items())
    for _ in range(3):
        rnd.shuffle(items)
        shuffled = dict(items)
        assert encoding.encode_trusted(shuffled) == reference_dumps(shuffled)
    # a str subclass equal to remembered keys takes cbor2's path, and gets cbor2's bytes
    odd = {Name(k): v for k, v in items}
    assert encoding.encode_trusted(odd) == reference_dumps(odd)


def test_cyclic_values_are_refused() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(EncodeError):
        encoding.encode_trusted(cyclic)
    with pytest.raises(EncodeError, match="nesting"):
        encoding.encode(cyclic)


@pytest.mark.parametrize("n", [-1, 2**64, 2**70])
def test_head_refuses_what_is_no_head(n: int) -> None:
    with pytest.raises(ValueError):
        encoding.head(encoding.MAJOR_UINT, n)
    with pytest.raises(ValueError):
        encoding.uint(n)


@given(boundary_uints)
def test_uint_and_head_are_shortest_forms(n: int) -> None:
    assert encoding.uint(n) == cbor2.dumps(n)
    assert encoding.head(encoding.MAJOR_BYTES, n)[0] >> 5 == 2
    assert encoding.head(encoding.MAJOR_BYTES, n)[1:] == encoding.uint(n)[1:]


# --- decode against the version that always walked the types and re-encoded with cbor2 ----


def reference_decode(raw: bytes) -> Any:
    """``encoding.decode`` before the Python encoder (same checks, same messages)."""
    if not raw:
        raise DecodeError("empty input")
    if raw[0] >> 5 == 6:
        raise DecodeError("CBOR tags are not allowed")
    try:
        obj = cbor2.loads(raw, tag_hook=encoding._reject_tag)
    except DecodeError:
        raise
    except RecursionError as exc:
        raise DecodeError(f"nesting deeper than {encoding.MAX_DEPTH} levels") from exc
    except Exception as exc:
        raise DecodeError(f"malformed CBOR: {exc}") from exc
    encoding._check(obj, 0, DecodeError)
    try:
        canonical = cbor2.dumps(obj, canonical=True)
    except Exception as exc:
        raise DecodeError(f"cannot re-encode decoded value: {exc}") from exc
    if canonical != raw:
        raise DecodeError("not canonical CBOR (or trailing bytes)")
    return obj


def outcome(fn: Any, data: bytes) -> tuple[str, Any]:
    """("ok", repr of the result) or ("error", message); repr so that NaN equals NaN."""
    try:
        return ("ok", repr(fn(data)))
    except DecodeError as exc:
        return ("error", exc.message)


def cbor_inputs() -> st.SearchStrategy[bytes]:
    """Canonical encodings, cbor2's non-canonical ones, and their mutations."""
    encoded = values.map(reference_dumps).filter(lambda b: b is not Exception)
    loose = values.map(_loose).filter(lambda b: b is not None)
    return st.one_of(encoded, loose, st.binary(max_size=64)).flatmap(mutations)


def _loose(value: Any) -> bytes | None:
    try:
        return bytes(cbor2.dumps(value))
    except Exception:
        return None


def mutations(data: Any) -> st.SearchStrategy[bytes]:
    assert isinstance(data, bytes)
    if not data:
        return st.just(data)
    index = st.integers(0, len(data) - 1)
    return st.one_of(
        st.just(data),
        index.map(lambda i: data[:i]),
        st.binary(min_size=1, max_size=3).map(lambda tail: data + tail),
        st.tuples(index, st.integers(1, 255)).map(
            lambda t: data[: t[0]] + bytes([data[t[0]] ^ t[1]]) + data[t[0] + 1 :]
        ),
    )


@given(cbor_inputs())
@example(bytes.fromhex("a2616101616102"))  # a shape the key-order memo may have seen
@example(bytes.fromhex("a2616202616101"))  # the same keys out of order
@example(b"\x81" * 40 + b"\x00")
@example(bytes.fromhex("f93e00"))  # a float
def test_decode_behaves_as_before(data: bytes) -> None:
    assert outcome(encoding.decode, data) == outcome(reference_decode, data)


# --- oplog blocks --------------------------------------------------------------------------

keys32 = st.binary(min_size=32, max_size=32) | st.sampled_from([b"\x00" * 32, b"\xff" * 32])
positive = boundary_uints.filter(lambda n: n >= 1)
signatures = st.builds(
    CheckpointSignature,
    boundary_uints,
    boundary_uints,
    boundary_uints,
    keys32,
    keys32,
    keys32,
    st.binary(min_size=64, max_size=64),
)
head_lists = st.lists(st.tuples(keys32, positive), max_size=8) | st.integers(0, 300).map(
    lambda n: [(i.to_bytes(32, "big"), i + 1) for i in range(n)]
)


@st.composite
def valid_blocks(draw: st.DrawFn) -> OplogBlock:
    heads = tuple(sorted(set(draw(head_lists))))
    value = draw(st.none() | st.binary(max_size=40) | big_binary)
    batch = 1 if value is None else draw(st.sampled_from(
        [1, 2, 23, 24, 255, 256, 65535, 65536, oplog.MAX_BATCH]) | st.integers(1, oplog.MAX_BATCH))
    checkpoints = tuple(draw(st.lists(signatures, max_size=3)))
    return OplogBlock(heads=heads, batch=batch, value=value, checkpoints=checkpoints)


@given(valid_blocks())
@settings(max_examples=300)
def test_valid_blocks_encode_as_the_generic_map_and_parse_on_the_fast_path(
    block: OplogBlock,
) -> None:
    data = encode_block(block)
    assert data == oplog._encode_block_generic(block)
    assert oplog._decode_block_fast(data) == block  # no fallback for anything valid
    assert oplog._decode_block_checked(data) == block
    assert decode_block(data) == block


# Typed but out of range (what the base never builds): still the generic bytes.
@given(
    st.lists(st.tuples(keys32 | st.binary(max_size=40), all_ints), max_size=4),
    all_ints,
    st.none() | st.binary(max_size=30),
    st.lists(signatures, max_size=2),
)
def test_any_typed_block_encodes_as_the_generic_map(
    heads: list[tuple[bytes, int]], batch: int, value: bytes | None, sigs: list[Any]
) -> None:
    block = OplogBlock(heads=tuple(heads), batch=batch, value=value, checkpoints=tuple(sigs))
    try:
        expected: bytes | None = oplog._encode_block_generic(block)
    except EncodeError:
        expected = None
    if expected is None:
        with pytest.raises(EncodeError):
            encode_block(block)
    else:
        assert encode_block(block) == expected


def block_inputs() -> st.SearchStrategy[bytes]:
    near = st.fixed_dictionaries(
        {},
        optional={
            "v": st.sampled_from([1, 2, 0, -1, True]),
            "heads": st.lists(st.one_of(st.tuples(keys32, all_ints).map(list),
                                        st.lists(st.binary(max_size=33), max_size=3)),
                              max_size=3),
            "batch": all_ints | st.none(),
            "value": st.none() | st.binary(max_size=10) | st.integers(),
            "ckpt": st.lists(signatures.map(lambda s: s.to_wire()), max_size=2)
            | st.just([[1, 2]]),
            "x": st.integers(),
        },
    ).map(reference_dumps)
    return st.one_of(
        valid_blocks().map(encode_block),
        near.filter(lambda b: b is not Exception),
        st.binary(max_size=80),
    ).flatmap(mutations)


@given(block_inputs())
@settings(max_examples=500)
def test_decode_block_agrees_with_the_checked_path(data: bytes) -> None:
    assert outcome(decode_block, data) == outcome(oplog._decode_block_checked, data)


def test_every_cut_of_a_block_fails_as_on_the_checked_path() -> None:
    sig = CheckpointSignature(1, 300, 70000, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32,
                              b"\x04" * 64)
    block = OplogBlock(heads=((b"\x05" * 32, 2**40),), batch=3, value=b"x" * 300,
                       checkpoints=(sig,))
    data = encode_block(block)
    for cut in range(len(data)):
        fast, checked = outcome(decode_block, data[:cut]), outcome(
            oplog._decode_block_checked, data[:cut])
        assert fast == checked and fast[0] == "error"
    # other byte containers take the checked path and decode the same
    assert decode_block(bytearray(data)) == decode_block(memoryview(data)) == block


def uint_in(n: int, width: int) -> bytes:
    """``n`` as a CBOR unsigned integer with an argument of ``width`` bytes (0: in the head)."""
    if width == 0:
        return bytes([n])
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([info]) + n.to_bytes(width, "big")


def hand_block(batch: bytes, length: bytes, epoch: bytes) -> bytes:
    sig = (b"\x87" + epoch + b"\x01\x01" + (b"\x58\x20" + b"\x03" * 32) * 3
           + b"\x58\x40" + b"\x04" * 64)
    return (b"\xa5\x61v\x01\x64ckpt\x81" + sig + b"\x65batch" + batch + b"\x65heads\x81\x82\x58\x20"
            + b"\x05" * 32 + length + b"\x65value\x41x")


WIDTH_CASES = [
    (n, width)
    for n in [1, 23, 24, 255, 256, 65535, 65536, oplog.MAX_BATCH, oplog.MAX_BATCH + 1,
              2**32 - 1, 2**32]
    for width in (0, 1, 2, 4, 8)
    if (n < 24 if width == 0 else n < 256**width)  # every width the integer fits in
]


@pytest.mark.parametrize(("n", "width"), WIDTH_CASES)
@pytest.mark.parametrize("field", ["batch", "length", "epoch"])
def test_integers_in_every_width_are_judged_as_on_the_checked_path(
    width: int, n: int, field: str
) -> None:
    one = uint_in(1, 0)
    parts = {"batch": one, "length": one, "epoch": one, field: uint_in(n, width)}
    data = hand_block(parts["batch"], parts["length"], parts["epoch"])
    fast, checked = outcome(decode_block, data), outcome(oplog._decode_block_checked, data)
    assert fast == checked
    shortest = encoding.uint(n) == uint_in(n, width)
    assert (fast[0] == "ok") == (shortest and not (field == "batch" and n > oplog.MAX_BATCH))


@pytest.mark.parametrize("levels", [31, 32, 33, 34])
def test_nesting_at_the_limit_decodes_as_before(levels: int) -> None:
    for data in (b"\x81" * levels + b"\x00", b"\xa1\x61k" * levels + b"\x00"):
        assert outcome(encoding.decode, data) == outcome(reference_decode, data)
    assert outcome(encoding.decode, b"\x81" * 32 + b"\x00")[0] == "ok"
    assert outcome(encoding.decode, b"\x81" * 33 + b"\x00")[0] == "error"


few_keys = st.sampled_from([b"\x01" * 32, b"\x02" * 32, b"\x03" * 32])


@given(st.lists(st.tuples(few_keys, st.integers(1, 3)), max_size=4))
def test_unsorted_or_repeated_heads_are_refused_as_on_the_checked_path(
    heads: list[tuple[bytes, int]],
) -> None:
    data = hand_heads(heads)
    fast, checked = outcome(decode_block, data), outcome(oplog._decode_block_checked, data)
    assert fast == checked
    assert (fast[0] == "ok") == (heads == sorted(set(heads)))


def hand_heads(heads: list[tuple[bytes, int]]) -> bytes:
    body = b"".join(b"\x82\x58\x20" + k + encoding.uint(n) for k, n in heads)
    return (b"\xa4\x61v\x01\x65batch\x01\x65heads" + encoding.head(encoding.MAJOR_ARRAY, len(heads))
            + body + b"\x65value\xf6")


def test_every_byte_flip_of_blocks_is_judged_as_on_the_checked_path() -> None:
    sig = CheckpointSignature(24, 256, 65536, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32,
                              b"\x04" * 64)
    blocks = [
        OplogBlock(heads=((b"\x05" * 32, 24), (b"\x06" * 32, 1)), batch=2, value=b"xy",
                   checkpoints=(sig, sig)),
        OplogBlock(heads=((b"\x05" * 32, 2**32),)),
    ]
    for block in blocks:
        data = encode_block(block)
        for i in range(len(data)):
            for flip in (0x01, 0x20, 0x80, 0xFF):
                bad = data[:i] + bytes([data[i] ^ flip]) + data[i + 1 :]
                assert outcome(decode_block, bad) == outcome(oplog._decode_block_checked, bad)


@pytest.mark.parametrize(
    ("count", "ok"), [(oplog.MAX_HEADS, True), (oplog.MAX_HEADS + 1, False)]
)
def test_head_count_limit_on_both_paths(count: int, ok: bool) -> None:
    data = hand_heads([(i.to_bytes(32, "big"), 1) for i in range(count)])
    fast, checked = outcome(decode_block, data), outcome(oplog._decode_block_checked, data)
    assert fast == checked and (fast[0] == "ok") == ok


@pytest.mark.parametrize(
    ("count", "ok"), [(oplog.MAX_CHECKPOINTS, True), (oplog.MAX_CHECKPOINTS + 1, False)]
)
def test_checkpoint_count_limit_on_both_paths(count: int, ok: bool) -> None:
    sig = CheckpointSignature(1, 2, 3, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 64)
    data = oplog._encode_block_generic(OplogBlock(heads=(), value=b"", checkpoints=(sig,) * count))
    fast, checked = outcome(decode_block, data), outcome(oplog._decode_block_checked, data)
    assert fast == checked and (fast[0] == "ok") == ok


class Liar(str):
    """Equal to (and hashed as) "v", while its text is "zz"."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other == "v"

    def __hash__(self) -> int:
        return hash("v")


def test_a_remembered_key_order_is_used_only_for_exact_str_keys() -> None:
    remembered = {"v": 1, "heads": 2}
    assert encoding.encode_trusted(remembered) == reference_dumps(remembered)
    odd = {Liar("zz"): 1, "heads": 2}
    assert encoding.encode_trusted(odd) == reference_dumps(odd)
    assert b"zz" in encoding.encode_trusted(odd)


def test_the_key_order_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "_ORDERS", {})  # fill a fresh one, leave the real one be
    many = {f"k{i}": i for i in range(encoding._ORDER_KEYS_MAX + 1)}
    long = {"x" * (encoding._ORDER_KEY_CHARS_MAX + 1): 1, "y": 2}
    for obj in (many, long):
        assert encoding.encode_trusted(obj) == reference_dumps(obj)
        assert tuple(obj) not in encoding._ORDERS
    for i in range(encoding._ORDERS_MAX + 10):
        shape = {f"a{i}": 1, "b": 2}
        assert encoding.encode_trusted(shape) == reference_dumps(shape)
    assert len(encoding._ORDERS) <= encoding._ORDERS_MAX
