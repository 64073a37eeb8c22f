"""The registry's record: an AI model entry, validated at every edge.

``Entry.parse`` is the one place user input becomes an entry: from an :class:`Entry` or a
mapping (RPC payload, CLI flags, test literals). It accepts ``drive_key`` as 32 bytes, 64 hex
characters or 52 z-base-32 characters, and refuses, naming the field: a missing or empty
``name``/``type``, a drive key of the wrong length or undecodable, an unknown field, and a
value of the wrong type. Nothing invalid ever reaches the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autobase_py import ids
from autobase_py.errors import InvalidKeyError

from .errors import ValidationError

FIELDS = ("name", "drive_key", "type", "description", "owner")
_REQUIRED_TEXT = ("name", "type")
_OPTIONAL_TEXT = ("description", "owner")
MAX_TEXT = 4096


@dataclass(frozen=True, slots=True)
class Entry:
    """One model in the registry. ``drive_key`` is always the 32 raw bytes."""

    name: str
    drive_key: bytes
    type: str
    description: str | None = None
    owner: str | None = None

    @classmethod
    def parse(cls, value: Entry | Mapping[str, Any]) -> Entry:
        """Validate user input into an Entry; ValidationError names the first bad field."""
        if isinstance(value, Entry):
            value = value.to_dict()
        if not isinstance(value, Mapping):
            raise ValidationError("entry", f"must be a mapping, got {type(value).__name__}")
        for key in value:
            if key not in FIELDS:
                raise ValidationError(str(key), "unknown field")
        fields: dict[str, Any] = {}
        for name in _REQUIRED_TEXT:
            raw = value.get(name)
            if raw is None:
                raise ValidationError(name, "is required")
            fields[name] = _text(name, raw, required=True)
        raw_key = value.get("drive_key")
        if raw_key is None:
            raise ValidationError("drive_key", "is required")
        try:
            fields["drive_key"] = ids.normalize(raw_key)
        except InvalidKeyError as exc:
            raise ValidationError("drive_key", exc.message) from exc
        for name in _OPTIONAL_TEXT:
            raw = value.get(name)
            fields[name] = None if raw is None else _text(name, raw, required=False)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "drive_key": self.drive_key,
            "type": self.type,
            "description": self.description,
            "owner": self.owner,
        }

    def to_json(self) -> dict[str, Any]:
        """Text-only form for the CLI and JSON output (drive key printed as z-base-32)."""
        d = self.to_dict()
        d["drive_key"] = ids.encode(self.drive_key)
        return d


def _text(field: str, raw: Any, *, required: bool) -> str:
    if not isinstance(raw, str):
        raise ValidationError(field, f"must be a string, got {type(raw).__name__}")
    if required and not raw:
        raise ValidationError(field, "must not be empty")
    if len(raw) > MAX_TEXT:
        raise ValidationError(field, f"longer than {MAX_TEXT} characters")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "is not valid unicode (lone surrogate)") from None
    return raw


def validate_name(raw: Any) -> str:
    """A registry key (entry name) from user input."""
    return _text("name", raw, required=True)


__all__ = ["FIELDS", "Entry", "validate_name"]
