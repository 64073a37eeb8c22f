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
_FIELD_SET = frozenset(FIELDS)
builtins_type = type  # the dataclass below has a field called ``type``
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
            # an Entry has exactly the known fields; its values may still be anything
            return cls._checked(
                value.name, value.drive_key, value.type, value.description, value.owner
            )
        if not isinstance(value, Mapping):
            raise ValidationError("entry", f"must be a mapping, got {type(value).__name__}")
        for key in value:
            if key not in _FIELD_SET:
                raise ValidationError(str(key), "unknown field")
        get = value.get
        return cls._checked(get("name"), get("drive_key"), get("type"), get("description"),
                            get("owner"))

    @classmethod
    def _checked(
        cls, name: Any, drive_key: Any, type: Any, description: Any, owner: Any  # noqa: A002
    ) -> Entry:
        # Field order of the checks (and so which error comes first): name, type, drive_key,
        # description, owner.
        if name is None:
            raise ValidationError("name", "is required")
        name = _text("name", name, required=True)
        if type is None:
            raise ValidationError("type", "is required")
        type = _text("type", type, required=True)  # noqa: A001
        if drive_key is None:
            raise ValidationError("drive_key", "is required")
        if builtins_type(drive_key) is not bytes or len(drive_key) != ids.KEY_BYTES:
            try:
                drive_key = ids.normalize(drive_key)
            except InvalidKeyError as exc:
                raise ValidationError("drive_key", exc.message) from exc
        if description is not None:
            description = _text("description", description, required=False)
        if owner is not None:
            owner = _text("owner", owner, required=False)
        return cls(name, drive_key, type, description, owner)

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
    if builtins_type(raw) is str and raw.isascii():  # the common case: nothing else to check
        if not raw and required:
            raise ValidationError(field, "must not be empty")
        if len(raw) > MAX_TEXT:
            raise ValidationError(field, f"longer than {MAX_TEXT} characters")
        return raw
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
