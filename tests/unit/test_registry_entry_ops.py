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
