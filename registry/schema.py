"""Versioned record schemas, the compatibility rules between versions, and the record codec.

The declared schema history lives in ``registry/spec/registry.json`` (checked-in data, like
hyperschema's generated JSON). It holds every schema version ever released, oldest first, and
the op table. Nothing in the history is ever edited: a change is a new version appended at the
end, and :func:`check_history` / :func:`check_upgrade` enforce the rules below.

Compatibility rules (stricter than hyperschema, which silently accepts a new required field):

* allowed: adding an optional field to a record, adding a record, a collection or an index;
* refused: removing a field, a record, a collection or an index; changing a field's type;
  flipping required/optional; adding a required field; renumbering a collection or an index;
  changing what a collection or index is keyed by.
* ops: an op id, once declared, keeps its name and request forever and is never reused.

Every refusal names the change and why it breaks readers, all violations at once.

Records are stored as canonical CBOR maps ``{"v": version, field: value, ...}`` with absent
optional fields left out. A record written under version k reads back under any version >= k;
fields it does not carry come back as ``None``. A record claiming a version newer than the
running code, or carrying a field the running schema does not know, is refused: an old node
must not guess at newer data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from autobase_py import encoding
from autobase_py.errors import DecodeError, EncodeError

from .errors import IncompatibleSchemaError, SchemaError

SPEC_PATH = Path(__file__).resolve().parent / "spec" / "registry.json"

SCALAR_TYPES = frozenset({"string", "fixed32", "bool", "uint", "bytes"})
_VERSION_FIELD = "v"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: str
    required: bool


@dataclass(frozen=True, slots=True)
class RecordSpec:
    name: str
    fields: tuple[FieldSpec, ...]

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    name: str
    id: int
    record: str
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IndexSpec:
    name: str
    id: int
    collection: str
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    version: int
    records: Mapping[str, RecordSpec]
    collections: Mapping[str, CollectionSpec]
    indexes: Mapping[str, IndexSpec]


@dataclass(frozen=True, slots=True)
class OpSpec:
    id: int
    name: str
    since: int
    request: tuple[FieldSpec, ...]


@dataclass(frozen=True, slots=True)
class Spec:
    versions: tuple[SchemaVersion, ...]
    ops: tuple[OpSpec, ...]

    @property
    def latest(self) -> SchemaVersion:
        return self.versions[-1]

    def version(self, number: int) -> SchemaVersion:
        for v in self.versions:
            if v.version == number:
                return v
        raise SchemaError(f"schema version {number} is not declared")

    def op(self, name: str) -> OpSpec:
        for op in self.ops:
            if op.name == name:
                return op
        raise SchemaError(f"op {name!r} is not declared")


# --- parsing the declared history -----------------------------------------------------------


def _req(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise SchemaError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SchemaError(f"{where}: {key!r} must be {kind.__name__}")
    return value


def _fields(raw: Any, where: str) -> tuple[FieldSpec, ...]:
    if not isinstance(raw, list):
        raise SchemaError(f"{where}: fields must be a list")
    out: list[FieldSpec] = []
    for i, f in enumerate(raw):
        if not isinstance(f, dict):
            raise SchemaError(f"{where}: field #{i} must be an object")
        spec = FieldSpec(
            name=_req(f, "name", str, f"{where} field #{i}"),
            type=_req(f, "type", str, f"{where} field #{i}"),
            required=_req(f, "required", bool, f"{where} field #{i}"),
        )
        if spec.name == _VERSION_FIELD:
            raise SchemaError(f"{where}: field name {_VERSION_FIELD!r} is reserved")
        if spec.type not in SCALAR_TYPES and not spec.type.startswith("record:"):
            raise SchemaError(f"{where}: field {spec.name!r} has unknown type {spec.type!r}")
        if any(o.name == spec.name for o in out):
            raise SchemaError(f"{where}: field {spec.name!r} declared twice")
        out.append(spec)
    return tuple(out)


def _version(raw: Any, where: str) -> SchemaVersion:
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: must be an object")
    number = _req(raw, "version", int, where)
    where = f"schema version {number}"
    records = {
        name: RecordSpec(name, _fields(_req(r, "fields", list, f"{where} record {name}"), name))
        for name, r in _req(raw, "records", dict, where).items()
    }
    collections = {
        name: CollectionSpec(
            name=name,
            id=_req(c, "id", int, f"{where} collection {name}"),
            record=_req(c, "record", str, f"{where} collection {name}"),
            key=tuple(_req(c, "key", list, f"{where} collection {name}")),
        )
        for name, c in _req(raw, "collections", dict, where).items()
    }
    indexes = {
        name: IndexSpec(
            name=name,
            id=_req(x, "id", int, f"{where} index {name}"),
            collection=_req(x, "collection", str, f"{where} index {name}"),
            key=tuple(_req(x, "key", list, f"{where} index {name}")),
        )
        for name, x in _req(raw, "indexes", dict, where).items()
    }
    version = SchemaVersion(number, records, collections, indexes)
    _check_version_consistent(version)
    return version


def _check_version_consistent(v: SchemaVersion) -> None:
    where = f"schema version {v.version}"
    ids: dict[int, str] = {}
    for c in v.collections.values():
        record = v.records.get(c.record)
        if record is None:
            raise SchemaError(f"{where}: collection {c.name!r} uses unknown record {c.record!r}")
        for k in c.key:
            f = record.field(k)
            if f is None or not f.required:
                raise SchemaError(f"{where}: collection {c.name!r} key {k!r} must be required")
        if c.id in ids:
            raise SchemaError(f"{where}: id {c.id} used by {ids[c.id]!r} and {c.name!r}")
        ids[c.id] = c.name
    for x in v.indexes.values():
        coll = v.collections.get(x.collection)
        if coll is None:
            raise SchemaError(f"{where}: index {x.name!r} on unknown collection {x.collection!r}")
        record = v.records[coll.record]
        for k in x.key:
            if record.field(k) is None:
                raise SchemaError(f"{where}: index {x.name!r} keyed by unknown field {k!r}")
        if x.id in ids:
            raise SchemaError(f"{where}: id {x.id} used by {ids[x.id]!r} and {x.name!r}")
        ids[x.id] = x.name


def _ops(raw: Any) -> tuple[OpSpec, ...]:
    if not isinstance(raw, list):
        raise SchemaError("ops must be a list")
    ops: list[OpSpec] = []
    for i, o in enumerate(raw):
        if not isinstance(o, dict):
            raise SchemaError(f"op #{i} must be an object")
        op = OpSpec(
            id=_req(o, "id", int, f"op #{i}"),
            name=_req(o, "name", str, f"op #{i}"),
            since=_req(o, "since", int, f"op #{i}"),
            request=_fields(_req(o, "request", list, f"op #{i}"), f"op {o.get('name')!r}"),
        )
        if op.id < 0:
            raise SchemaError(f"op {op.name!r}: id must be >= 0")
        if any(p.id == op.id for p in ops):
            raise SchemaError(f"op id {op.id} declared twice")
        if any(p.name == op.name for p in ops):
            raise SchemaError(f"op name {op.name!r} declared twice")
        ops.append(op)
    return tuple(ops)


def parse_spec(raw: Any) -> Spec:
    """A :class:`Spec` from the decoded JSON; SchemaError names what is malformed."""
    if not isinstance(raw, dict):
        raise SchemaError("spec must be a JSON object")
    versions_raw = _req(raw, "versions", list, "spec")
    if not versions_raw:
        raise SchemaError("spec declares no schema version")
    versions = tuple(_version(v, f"versions[{i}]") for i, v in enumerate(versions_raw))
    spec = Spec(versions=versions, ops=_ops(raw.get("ops", [])))
    check_history(spec)
    return spec


def load_spec(path: Path | str | None = None) -> Spec:
    """The declared schema history (default: the checked-in ``registry/spec/registry.json``)."""
    p = Path(path) if path is not None else SPEC_PATH
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read schema spec {p}: {exc}") from exc
    return parse_spec(raw)


def spec_at(spec: Spec, version: int) -> Spec:
    """The history as it stood when ``version`` was the newest (how older code saw it)."""
    spec.version(version)  # SchemaError when not declared
    return Spec(
        versions=tuple(v for v in spec.versions if v.version <= version),
        ops=tuple(op for op in spec.ops if op.since <= version),
    )


# --- compatibility --------------------------------------------------------------------------


def incompatibilities(old: SchemaVersion, new: SchemaVersion) -> list[str]:
    """Every change from ``old`` to ``new`` that would break readers; empty when compatible."""
    problems: list[str] = []
    for name, old_rec in old.records.items():
        new_rec = new.records.get(name)
        if new_rec is None:
            problems.append(f"record {name!r} removed: stored {name} records could not be read")
            continue
        for f in old_rec.fields:
            g = new_rec.field(f.name)
            if g is None:
                problems.append(
                    f"field {name}.{f.name} removed: stored records carry it and would be refused"
                )
            elif g.type != f.type:
                problems.append(
                    f"field {name}.{f.name} changed type {f.type} -> {g.type}: stored values "
                    "would be misread"
                )
            elif g.required != f.required:
                flip = "optional -> required" if g.required else "required -> optional"
                problems.append(
                    f"field {name}.{f.name} flipped {flip}: "
                    + (
                        "older records may lack it"
                        if g.required
                        else "older readers would refuse records without it"
                    )
                )
        for g in new_rec.fields:
            if old_rec.field(g.name) is None and g.required:
                problems.append(
                    f"required field {name}.{g.name} added: records written before have no "
                    "value for it (add it as optional)"
                )
    for kind, old_map, new_map in (
        ("collection", old.collections, new.collections),
        ("index", old.indexes, new.indexes),
    ):
        for name, o in old_map.items():
            n = new_map.get(name)
            if n is None:
                problems.append(f"{kind} {name!r} removed: readers rely on it")
            elif n != o:
                problems.append(
                    f"{kind} {name!r} redefined (id, record or key changed): stored keys "
                    "would no longer match"
                )
    return problems


def check_compatible(old: SchemaVersion, new: SchemaVersion) -> None:
    """Raise IncompatibleSchemaError listing every breaking change from ``old`` to ``new``."""
    problems = incompatibilities(old, new)
    if problems:
        raise IncompatibleSchemaError(problems)


def check_history(spec: Spec) -> None:
    """Versions number 1, 2, 3, ... and every step is compatible; ops are well-formed."""
    for i, v in enumerate(spec.versions):
        if v.version != i + 1:
            raise SchemaError(f"schema versions must be numbered 1, 2, ...; found {v.version}")
    for old, new in zip(spec.versions, spec.versions[1:], strict=False):
        check_compatible(old, new)
    for op in spec.ops:
        if not 1 <= op.since <= spec.latest.version:
            raise SchemaError(f"op {op.name!r}: since={op.since} is not a declared version")
        for f in op.request:
            if f.type.startswith("record:"):
                record = f.type.removeprefix("record:")
                if record not in spec.version(op.since).records:
                    raise SchemaError(f"op {op.name!r}: unknown record type {record!r}")


def check_upgrade(old: Spec, new: Spec) -> None:
    """A proposed new spec must keep the old history verbatim and only append to it."""
    problems: list[str] = []
    if len(new.versions) < len(old.versions):
        problems.append("schema versions removed from the history")
    for o, n in zip(old.versions, new.versions, strict=False):
        if o != n:
            problems.append(f"released schema version {o.version} was edited (append instead)")
    for op in old.ops:
        same_id = next((p for p in new.ops if p.id == op.id), None)
        if same_id is None:
            problems.append(f"op {op.name!r} (id {op.id}) removed: old logs still carry it")
        elif same_id != op:
            problems.append(f"op id {op.id} ({op.name!r}) changed: ids are never reused")
    if problems:
        raise IncompatibleSchemaError(problems)
    check_history(new)


# --- record codec ---------------------------------------------------------------------------


def encode_record(schema: SchemaVersion, record: str, values: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a record under ``schema`` (values already validated)."""
    spec = schema.records[record]
    out: dict[str, Any] = {_VERSION_FIELD: schema.version}
    for f in spec.fields:
        value = values.get(f.name)
        if value is not None:
            out[f.name] = value
    return encoding.encode(out)


def canonical_order(names: Iterable[str]) -> tuple[str, ...]:
    """Map keys in canonical-CBOR order (by their encoded bytes: shorter text first)."""
    return tuple(sorted(names, key=encoding.encode))


def dumps_ordered(obj: dict[str, Any]) -> bytes:
    """Canonical CBOR of a map the caller built with every key (nested maps too) already in
    :func:`canonical_order` and only ``str``/``bytes``/``int``/``bool`` leaves: then plain CBOR
    is byte-for-byte canonical, without the encoder sorting every map again. Only for
    values the registry built from checked entries; ``decode`` still checks every read."""
    try:
        return bytes(cbor2.dumps(obj))
    except Exception as exc:  # cbor2 raises several types; one boundary converts them
        raise EncodeError(f"cannot encode: {exc}") from exc


class RecordEncoder:
    """``encode_record(schema, record, values)`` for checked values, precomputing the field
    order once (the same bytes; a fast path for the write path of one record type)."""

    def __init__(self, schema: SchemaVersion, record: str) -> None:
        self.version = schema.version
        self._order = canonical_order((_VERSION_FIELD, *schema.records[record].field_names))

    def encode(self, values: Mapping[str, Any]) -> bytes:
        out: dict[str, Any] = {}
        for name in self._order:
            value = self.version if name == _VERSION_FIELD else values.get(name)
            if value is not None:
                out[name] = value
        return dumps_ordered(out)


def decode_record(spec: Spec, record: str, data: bytes) -> dict[str, Any]:
    """A record's fields under the newest schema; absent optional fields are ``None``."""
    raw = encoding.expect_map(encoding.decode(data), f"{record} record")
    version = raw.get(_VERSION_FIELD)
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError(f"{record} record: missing schema version")
    if not 1 <= version <= spec.latest.version:
        raise DecodeError(
            f"{record} record written under schema version {version}; this node knows up to "
            f"{spec.latest.version} (upgrade it)"
        )
    written = spec.version(version).records.get(record)
    if written is None:
        raise DecodeError(f"record {record!r} did not exist in schema version {version}")
    current = spec.latest.records[record]
    out: dict[str, Any] = {}
    for key in raw:
        if key != _VERSION_FIELD and (not isinstance(key, str) or written.field(key) is None):
            raise DecodeError(f"{record} record: unknown field {key!r}")
    for f in current.fields:
        value = raw.get(f.name)
        declared = written.field(f.name)
        if value is None and declared is not None and declared.required:
            raise DecodeError(f"{record} record: missing required field {f.name!r}")
        if value is not None and not _type_ok(f.type, value):
            raise DecodeError(f"{record} record: field {f.name!r} is not a {f.type}")
        out[f.name] = value
    return out


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "fixed32":
        return isinstance(value, bytes) and len(value) == 32
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "uint":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "bytes":
        return isinstance(value, bytes)
    return isinstance(value, dict)  # nested record: validated by its own codec


__all__ = [
    "SPEC_PATH",
    "CollectionSpec",
    "FieldSpec",
    "IndexSpec",
    "OpSpec",
    "RecordSpec",
    "SchemaVersion",
    "Spec",
    "check_compatible",
    "check_history",
    "check_upgrade",
    "decode_record",
    "RecordEncoder",
    "canonical_order",
    "dumps_ordered",
    "encode_record",
    "incompatibilities",
    "load_spec",
    "parse_spec",
    "spec_at",
]
