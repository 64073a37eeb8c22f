"""Errors of the registry app; all derive from autobase_py's root so one ``except`` catches all."""

from __future__ import annotations

from autobase_py.errors import AutobaseError, LocalError


class ValidationError(LocalError):
    """A record or request is invalid; ``field`` names the offending field (wire: BAD_REQUEST)."""

    code = "BAD_REQUEST"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field = field
        self.problem = problem


class SchemaError(AutobaseError):
    """The declared schema history is malformed or a change to it is not allowed."""

    code = "SCHEMA_ERROR"


class IncompatibleSchemaError(SchemaError):
    """A new schema version breaks readers of older data; ``changes`` lists every violation."""

    code = "INCOMPATIBLE_SCHEMA"

    def __init__(self, changes: list[str]) -> None:
        super().__init__("incompatible schema change: " + "; ".join(changes))
        self.changes = changes


class RouterError(AutobaseError):
    """The op router is misconfigured (a declared op without a handler, a reused op id)."""

    code = "ROUTER_ERROR"


__all__ = [
    "IncompatibleSchemaError",
    "RouterError",
    "SchemaError",
    "ValidationError",
]
