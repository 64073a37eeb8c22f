"""The op router: stable numeric op ids -> request codecs -> handlers (hyperdispatch-style).

Every value a registry writer appends is an *op*: canonical CBOR
``{"op": id, "req": {...}, "v": schema version}``. ``v`` is the newest schema version of the
code that wrote the op; it is left out when that is 1 (ops written before envelopes carried a
version read as version 1). The op table (ids, names, request fields) is declared in
``registry/spec/registry.json``; ids are never reused (``schema.check_upgrade`` enforces it).
At apply time every peer runs the same decision for each value, so the outcome is
deterministic across peers:

* well-formed op with a known id -> its handler runs, and sees the writer's schema version as
  ``request.schema_version`` (:class:`Request`);
* well-formed envelope whose id this node does not know -> :class:`UnknownOp`, or whose ``v`` is
  newer than this node's schema -> :class:`NewerSchema`: the caller must ``host.interrupt`` (an
  old node meeting newer ops halts rather than diverges: it could not tell a newer record from
  an invalid one);
* anything else (undecodable bytes, bad envelope, request failing its schema) ->
  :class:`Skipped` with the reason: the op is ignored identically everywhere and the reason is
  logged.

The router refuses to be built when a declared op has no handler (or a handler names no op).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from autobase_py import encoding
from autobase_py.errors import DecodeError

from .entry import FIELDS, Entry
from .errors import RouterError, ValidationError
from .schema import FieldSpec, OpSpec, Spec, canonical_order, dumps_ordered

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Applied:
    op: str


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: str


@dataclass(frozen=True, slots=True)
class UnknownOp:
    op_id: int

    @property
    def reason(self) -> str:
        return f"op id {self.op_id} is unknown to this node (newer software wrote it): upgrade"


@dataclass(frozen=True, slots=True)
class NewerSchema:
    version: int
    known: int

    @property
    def reason(self) -> str:
        return (
            f"op written under schema version {self.version}; this node knows up to "
            f"{self.known} (newer software wrote it): upgrade"
        )


Outcome = Applied | Skipped | UnknownOp | NewerSchema


class Request(dict[str, Any]):
    """A checked op request; ``schema_version`` is the schema version of its writer."""

    def __init__(self, fields: Mapping[str, Any], schema_version: int) -> None:
        super().__init__(fields)
        self.schema_version = schema_version

# A handler returns None when it applied the op, or Skipped(reason) when the op is well-formed
# but must not take effect (e.g. not authorized); both outcomes are deterministic.
Handler = Callable[[Request, C], Awaitable[Skipped | None]]


class InvalidOpError(DecodeError):
    """An op value is malformed (bad envelope or request)."""

    code = "INVALID_OP"


class NewerSchemaError(DecodeError):
    """An op was written under a schema version newer than this node's."""

    code = "NEWER_SCHEMA"

    def __init__(self, version: int, known: int) -> None:
        super().__init__(NewerSchema(version, known).reason)
        self.version = version
        self.known = known


def _check_field(op: str, f: FieldSpec, value: Any) -> Any:
    if f.type == "record:entry":
        if not isinstance(value, dict):
            raise InvalidOpError(f"{op}: field {f.name!r} must be an entry map")
        try:
            return Entry.parse(value)
        except ValidationError as exc:
            raise InvalidOpError(f"{op}: {f.name}: {exc.message}") from exc
    if f.type == "fixed32":
        if not isinstance(value, bytes) or len(value) != 32:
            raise InvalidOpError(f"{op}: field {f.name!r} must be 32 bytes")
        return value
    if f.type == "bool":
        if not isinstance(value, bool):
            raise InvalidOpError(f"{op}: field {f.name!r} must be a bool")
        return value
    if f.type == "string":
        if not isinstance(value, str):
            raise InvalidOpError(f"{op}: field {f.name!r} must be a string")
        return value
    if f.type == "uint":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidOpError(f"{op}: field {f.name!r} must be an unsigned int")
        return value
    if f.type == "bytes":
        if not isinstance(value, bytes):
            raise InvalidOpError(f"{op}: field {f.name!r} must be bytes")
        return value
    raise InvalidOpError(f"{op}: field {f.name!r} has unsupported type {f.type}")


def _check_request(op: OpSpec, req: Any, names: frozenset[str] | None = None) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise InvalidOpError(f"{op.name}: request must be a map")
    if names is None:
        names = frozenset(f.name for f in op.request)
    for key in req:
        if not isinstance(key, str) or key not in names:
            raise InvalidOpError(f"{op.name}: unknown request field {key!r}")
    out: dict[str, Any] = {}
    for f in op.request:
        if f.name not in req or req[f.name] is None:
            if f.required:
                raise InvalidOpError(f"{op.name}: missing field {f.name!r}")
            out[f.name] = None
            continue
        out[f.name] = _check_field(op.name, f, req[f.name])
    return out


def _wire(value: Any) -> Any:
    if isinstance(value, Entry):
        return {k: v for k, v in value.to_dict().items() if v is not None}
    return value


class OpCodec:
    """Encodes and decodes op values against the declared op table."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._by_id = {op.id: op for op in spec.ops}
        self._by_name = {op.name: op for op in spec.ops}
        self._names = {op.id: frozenset(f.name for f in op.request) for op in spec.ops}
        self._entry_order = canonical_order(FIELDS)

    def encode(self, name: str, request: Mapping[str, Any]) -> bytes:
        op = self._by_name.get(name)
        if op is None:
            raise RouterError(f"op {name!r} is not declared in the spec")
        wire = {k: _wire(v) for k, v in request.items() if v is not None}
        checked = _check_request(op, wire, self._names[op.id])  # refuse what peers would skip
        req = {k: _wire(v) for k, v in checked.items() if v is not None}
        return encoding.encode(self._envelope(op, req))

    def _envelope(self, op: OpSpec, req: dict[str, Any]) -> dict[str, Any]:
        envelope: dict[str, Any] = {"op": op.id, "req": req}
        if self.version > 1:
            envelope["v"] = self.version
        return envelope

    def encode_parsed_entries(self, entries: Iterable[Entry]) -> list[bytes]:
        """One ``put-entry`` op per entry, for entries that came out of :meth:`Entry.parse`
        (the service parses every entry it is given, so :meth:`encode`'s second check of
        the same values is skipped; the bytes are identical). Peers still check every op they
        apply, so a bypass here can at worst produce ops that every peer skips."""
        op = self._by_name.get("put-entry")
        if op is None:
            raise RouterError("op 'put-entry' is not declared in the spec")
        # every map is built in canonical key order, so plain CBOR is canonical (schema.py)
        head: dict[str, Any] = {"v": self.version} if self.version > 1 else {}
        order = self._entry_order
        out = []
        for e in entries:
            entry = {}
            for name in order:
                value = getattr(e, name)
                if value is not None:
                    entry[name] = value
            out.append(dumps_ordered({**head, "op": op.id, "req": {"entry": entry}}))
        return out

    @property
    def version(self) -> int:
        """The schema version this codec writes (the spec's newest)."""
        return self.spec.latest.version

    def decode(self, data: bytes) -> tuple[OpSpec | int, Request]:
        """(op spec, checked request), or (unknown op id, empty request) for an id this node
        lacks; NewerSchemaError when the writer's schema version is newer than ours."""
        envelope = encoding.decode(data)
        # decode() yields plain dicts/ints only; keys are exactly {op, req} or {op, req, v}
        if (
            type(envelope) is not dict
            or "op" not in envelope
            or "req" not in envelope
            or len(envelope) != (3 if "v" in envelope else 2)
        ):
            raise InvalidOpError("op envelope must be a map with 'op', 'req' and optionally 'v'")
        op_id = envelope["op"]
        if type(op_id) is not int or op_id < 0:
            raise InvalidOpError("op id must be an unsigned int")
        version = envelope.get("v", 1)
        if type(version) is not int or version < 1:
            raise InvalidOpError("op schema version must be an int >= 1")
        if version > self.version:
            raise NewerSchemaError(version, self.version)
        op = self._by_id.get(op_id)
        if op is None:
            return op_id, Request({}, version)
        if op.since > version:
            raise InvalidOpError(f"{op.name}: declared in schema version {op.since}, written "
                                 f"under {version}")
        return op, Request(_check_request(op, envelope["req"], self._names[op.id]), version)


class Router(Generic[C]):
    """Dispatches op values to handlers; built only when every declared op has a handler."""

    def __init__(self, spec: Spec, handlers: Mapping[str, Handler[C]]) -> None:
        declared = {op.name for op in spec.ops}
        missing = sorted(declared - set(handlers))
        if missing:
            raise RouterError(f"declared ops without a handler: {', '.join(missing)}")
        extra = sorted(set(handlers) - declared)
        if extra:
            raise RouterError(f"handlers for undeclared ops: {', '.join(extra)}")
        self.codec = OpCodec(spec)
        self._handlers = dict(handlers)

    async def dispatch(self, value: bytes, context: C) -> Outcome:
        try:
            op, request = self.codec.decode(value)
        except NewerSchemaError as exc:
            return NewerSchema(exc.version, exc.known)
        except DecodeError as exc:
            return Skipped(exc.message)
        if isinstance(op, int):
            return UnknownOp(op)
        skipped = await self._handlers[op.name](request, context)
        if skipped is not None:
            return skipped
        return Applied(op.name)


__all__ = [
    "Applied",
    "Handler",
    "InvalidOpError",
    "NewerSchema",
    "NewerSchemaError",
    "OpCodec",
    "Outcome",
    "Request",
    "Router",
    "Skipped",
    "UnknownOp",
]
