"""Entry validation and the op router."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobase_py import encoding, ids
from registry.entry import Entry
from registry.errors import RouterError, ValidationError
from registry.ops import Applied, OpCodec, Router, Skipped, UnknownOp
from registry.schema import load_spec

KEY = bytes([0xAA]) * 32
GOOD = {"name": "e1", "drive_key": KEY, "type": "type1"}


def test_optional_fields_default_to_none_and_keys_normalise() -> None:
    e = Entry.parse(GOOD)
    assert e == Entry("e1", KEY, "type1", None, None)
    assert Entry.parse(dict(GOOD, drive_key=KEY.hex())) == e
    assert Entry.parse(dict(GOOD, drive_key=ids.encode(KEY))) == e
    assert Entry.parse(e) == e


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"name": None}, "name", "required"),
        ({"name": ""}, "name", "empty"),
        ({"type": ""}, "type", "empty"),
        ({"type": 3}, "type", "string"),
        ({"drive_key": b"x" * 31}, "drive_key", "31"),
        ({"drive_key": "zz"}, "drive_key", "characters"),
        ({"drive_key": None}, "drive_key", "required"),
        ({"color": "red"}, "color", "unknown field"),
        ({"description": 5}, "description", "string"),
        ({"owner": b"x"}, "owner", "string"),
    ],
)
def test_invalid_entries_name_the_field(change: dict[str, Any], field: str, problem: str) -> None:
    raw = {k: v for k, v in dict(GOOD, **change).items() if not (k == field and v is None)}
    with pytest.raises(ValidationError, match=problem) as info:
        Entry.parse(raw)
    assert info.value.field == field
    assert info.value.code == "BAD_REQUEST"


class Context:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Mapping[str, Any]]] = []


def make_router(ctx_log: list[tuple[str, Mapping[str, Any]]]) -> Router[Context]:
    def handler(name: str) -> Any:
        async def handle(req: Mapping[str, Any], ctx: Context) -> None:
            ctx.calls.append((name, req))

        return handle

    names = ["add-writer", "remove-writer", "put-entry", "delete-entry"]
    return Router(load_spec(), {n: handler(n) for n in names})


def test_router_refuses_to_start_without_every_handler() -> None:
    async def noop(req: Mapping[str, Any], ctx: Context) -> None:
        return None

    with pytest.raises(RouterError, match="delete-entry"):
        Router(load_spec(), {"add-writer": noop, "remove-writer": noop, "put-entry": noop})
    with pytest.raises(RouterError, match="undeclared"):
        Router(
            load_spec(),
            {n: noop for n in ["add-writer", "remove-writer", "put-entry", "delete-entry", "x"]},
        )


async def test_router_dispatches_known_ops() -> None:
    router = make_router([])
    ctx = Context()
    value = router.codec.encode("put-entry", {"entry": Entry.parse(GOOD)})
    assert await router.dispatch(value, ctx) == Applied("put-entry")
    assert ctx.calls == [("put-entry", {"entry": Entry.parse(GOOD)})]
    value = router.codec.encode("add-writer", {"key": KEY, "indexer": True})
    assert await router.dispatch(value, ctx) == Applied("add-writer")


async def test_unknown_op_id_is_reported_not_skipped() -> None:
    router = make_router([])
    outcome = await router.dispatch(encoding.encode({"op": 99, "req": {}}), Context())
    assert isinstance(outcome, UnknownOp) and outcome.op_id == 99
    assert "upgrade" in outcome.reason


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\x00",
        encoding.encode([1, 2]),
        encoding.encode({"op": 2}),
        encoding.encode({"op": -1, "req": {}}),
        encoding.encode({"op": 2, "req": {"entry": {"name": "x"}}}),
        encoding.encode({"op": 3, "req": {"name": 5}}),
        encoding.encode({"op": 0, "req": {"key": b"short", "indexer": True}}),
        encoding.encode({"op": 3, "req": {"name": "x", "extra": 1}}),
        # envelope shape: exactly {op, req} or {op, req, v}
        encoding.encode({"req": {"name": "x"}, "v": 2}),
        encoding.encode({"op": 3, "v": 2, "x": 1}),
        encoding.encode({"op": 3, "req": {"name": "x"}, "x": 1}),
        encoding.encode({"op": 3, "req": {"name": "x"}, "v": 2, "x": 1}),
        encoding.encode({"op": True, "req": {"name": "x"}}),
        encoding.encode({"op": 3.0, "req": {"name": "x"}}),
        encoding.encode({"op": 3, "req": {"name": "x"}, "v": True}),
        encoding.encode({"op": 3, "req": {"name": "x"}, "v": 0}),
        encoding.encode({"op": 2, "req": {"entry": [1]}}),
        encoding.encode({"op": 2, "req": []}),
    ],
)
async def test_malformed_ops_are_skipped_with_a_reason(value: bytes) -> None:
    ctx = Context()
    outcome = await make_router([]).dispatch(value, ctx)
    assert isinstance(outcome, Skipped) and outcome.reason
    assert ctx.calls == []


def test_codec_refuses_to_write_what_peers_would_skip() -> None:
    codec = OpCodec(load_spec())
    with pytest.raises(Exception, match="missing field 'name'"):
        codec.encode("delete-entry", {})
    with pytest.raises(RouterError):
        codec.encode("no-such-op", {})


@given(st.binary(max_size=80))
def test_decoding_random_bytes_as_an_op_raises_only_the_typed_error(data: bytes) -> None:
    codec = OpCodec(load_spec())
    try:
        op, req = codec.decode(data)
    except encoding.DecodeError:
        return
    assert isinstance(op, int) or req is not None


# --- the fast paths give the same answers as the general ones ---------------------------------

texts = st.text(alphabet="ab\x00\u20ac\U0001f600", max_size=6)
entries = st.builds(
    Entry,
    name=texts.filter(bool),
    drive_key=st.binary(min_size=32, max_size=32),
    type=texts.filter(bool),
    description=st.none() | texts,
    owner=st.none() | texts,
)


@given(entries)
def test_parse_accepts_entries_mappings_and_text_keys_alike(e: Entry) -> None:
    as_map = {k: v for k, v in e.to_dict().items() if v is not None}
    assert Entry.parse(e) == e
    assert Entry.parse(as_map) == e
    assert Entry.parse(dict(as_map, drive_key=bytearray(e.drive_key))) == e
    assert Entry.parse(dict(as_map, drive_key=e.drive_key.hex())) == e
    assert type(Entry.parse(dict(as_map, drive_key=bytearray(e.drive_key))).drive_key) is bytes


@pytest.mark.parametrize(
    ("entry", "field", "problem"),
    [
        # an Entry built directly is checked as thoroughly as a mapping
        (Entry("", KEY, "t"), "name", "empty"),
        (Entry(3, KEY, "t"), "name", "string"),  # type: ignore[arg-type]
        (Entry("e", KEY, None), "type", "required"),  # type: ignore[arg-type]
        (Entry("e", KEY[:31], "t"), "drive_key", "31"),
        (Entry("e", 7, "t"), "drive_key", "int"),  # type: ignore[arg-type]
        (Entry("e", KEY, "t", "\ud800"), "description", "surrogate"),
        (Entry("e", KEY, "t", owner="x" * 4097), "owner", "longer"),
        (Entry("e", KEY, "t", owner="\u20ac" * 4097), "owner", "longer"),
        (Entry("e\ud800", KEY, "t"), "name", "surrogate"),
    ],
)
def test_parse_checks_an_entry_instance_field_by_field(
    entry: Entry, field: str, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem) as info:
        Entry.parse(entry)
    assert info.value.field == field


@given(entries)
def test_encoding_parsed_entries_gives_the_bytes_encode_gives(e: Entry) -> None:
    codec = OpCodec(load_spec())
    parsed = Entry.parse(e)
    assert codec.encode_parsed_entries([parsed]) == [codec.encode("put-entry", {"entry": parsed})]
    op, request = codec.decode(codec.encode_parsed_entries([parsed])[0])
    assert not isinstance(op, int)
    assert op.name == "put-entry"
    assert request["entry"] == parsed


@given(entries)
def test_parsed_entries_encode_canonically_under_every_schema_version(e: Entry) -> None:
    from registry.schema import spec_at

    for version in (1, 2):
        codec = OpCodec(spec_at(load_spec(), version))
        parsed = Entry.parse(e if version > 1 else Entry(e.name, e.drive_key, e.type,
                                                          e.description))
        [fast] = codec.encode_parsed_entries([parsed])
        assert fast == codec.encode("put-entry", {"entry": parsed})
        assert encoding.decode(fast) is not None  # strict: canonical, or DecodeError
        assert ("v" in encoding.decode(fast)) == (version > 1)
