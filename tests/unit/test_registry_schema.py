"""The registry's declared schema history, its compatibility check and the record codec."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from autobase_py import encoding
from autobase_py.errors import DecodeError
from registry.errors import IncompatibleSchemaError, SchemaError
from registry.schema import (
    SPEC_PATH,
    check_upgrade,
    decode_record,
    encode_record,
    load_spec,
    parse_spec,
)

DRIVE = bytes(range(32))


def raw_spec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return data


def with_new_version(mutate: Any) -> dict[str, Any]:
    """The checked-in spec plus a version 3 = version 2 changed by ``mutate``."""
    raw = raw_spec()
    v3 = copy.deepcopy(raw["versions"][-1])
    v3["version"] = 3
    mutate(v3)
    raw["versions"].append(v3)
    return raw


def entry_fields(v: dict[str, Any]) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = v["records"]["entry"]["fields"]
    return fields


def test_checked_in_history_is_valid_and_owner_arrives_in_v2() -> None:
    spec = load_spec()
    assert [v.version for v in spec.versions] == [1, 2]
    v1, v2 = spec.versions
    assert v1.records["entry"].field("owner") is None
    owner = v2.records["entry"].field("owner")
    assert owner is not None and not owner.required
    assert "entries-by-owner" not in v1.indexes
    assert "entries-by-owner" in v2.indexes
    assert [(op.id, op.name) for op in spec.ops] == [
        (0, "add-writer"),
        (1, "remove-writer"),
        (2, "put-entry"),
        (3, "delete-entry"),
    ]


def test_adding_an_optional_field_and_an_index_is_allowed() -> None:
    def mutate(v: dict[str, Any]) -> None:
        entry_fields(v).append({"name": "license", "type": "string", "required": False})
        v["indexes"]["entries-by-license"] = {
            "id": 5, "collection": "entries", "key": ["license"]
        }

    spec = parse_spec(with_new_version(mutate))
    assert spec.latest.version == 3
    check_upgrade(load_spec(), spec)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda v: (entry_fields(v).pop(), v["indexes"].pop("entries-by-owner")),
            "field entry.owner removed",
        ),
        (
            lambda v: entry_fields(v)[2].update(type="bytes"),
            "field entry.type changed type string -> bytes",
        ),
        (
            lambda v: entry_fields(v)[3].update(required=True),
            "field entry.description flipped optional -> required",
        ),
        (
            lambda v: entry_fields(v)[2].update(required=False),
            "field entry.type flipped required -> optional",
        ),
        (
            lambda v: entry_fields(v).append(
                {"name": "license", "type": "string", "required": True}
            ),
            "required field entry.license added",
        ),
        (lambda v: v["indexes"].pop("entries-by-type"), "index 'entries-by-type' removed"),
        (
            lambda v: v["indexes"]["entries-by-type"].update(id=9),
            "index 'entries-by-type' redefined",
        ),
    ],
)
def test_breaking_changes_are_refused_with_the_reason(mutate: Any, message: str) -> None:
    with pytest.raises(IncompatibleSchemaError, match=message):
        parse_spec(with_new_version(mutate))


def test_released_versions_and_op_ids_are_immutable() -> None:
    old = load_spec()
    raw = raw_spec()
    raw["ops"][3]["name"] = "remove-entry"
    with pytest.raises(IncompatibleSchemaError, match="op id 3"):
        check_upgrade(old, parse_spec(raw))
    raw = raw_spec()
    raw["ops"].pop()
    with pytest.raises(IncompatibleSchemaError, match="removed"):
        check_upgrade(old, parse_spec(raw))
    raw = raw_spec()
    entry_fields(raw["versions"][0])[3]["type"] = "bytes"
    with pytest.raises((IncompatibleSchemaError, SchemaError)):
        check_upgrade(old, parse_spec(raw))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(versions=[]), "no schema version"),
        (lambda r: r["versions"][1].update(version=7), "numbered"),
        (lambda r: r["ops"].append(dict(r["ops"][0], name="x")), "declared twice"),
        (lambda r: entry_fields(r["versions"][0])[0].update(type="float"), "unknown type"),
        (lambda r: r["versions"][0]["indexes"]["entries-by-type"].update(key=["nope"]), "nope"),
    ],
)
def test_malformed_specs_are_named(mutate: Any, message: str) -> None:
    raw = raw_spec()
    mutate(raw)
    with pytest.raises(SchemaError, match=message):
        parse_spec(raw)


def test_version_1_records_read_back_under_version_2() -> None:
    spec = load_spec()
    v1 = spec.version(1)
    data = encode_record(
        v1, "entry", {"name": "m", "drive_key": DRIVE, "type": "t", "description": None}
    )
    record = decode_record(spec, "entry", data)
    assert record == {
        "name": "m", "drive_key": DRIVE, "type": "t", "description": None, "owner": None
    }


def test_records_from_newer_software_or_with_unknown_fields_are_refused() -> None:
    spec = load_spec()
    newer = encoding.encode({"v": 3, "name": "m", "drive_key": DRIVE, "type": "t"})
    with pytest.raises(DecodeError, match="version 3"):
        decode_record(spec, "entry", newer)
    # owner did not exist in version 1: a v1 record carrying it is malformed
    odd = encoding.encode({"v": 1, "name": "m", "drive_key": DRIVE, "type": "t", "owner": "x"})
    with pytest.raises(DecodeError, match="unknown field 'owner'"):
        decode_record(spec, "entry", odd)
    missing = encoding.encode({"v": 2, "name": "m", "type": "t"})
    with pytest.raises(DecodeError, match="drive_key"):
        decode_record(spec, "entry", missing)
