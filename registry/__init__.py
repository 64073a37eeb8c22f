"""The AI-model registry on autobase_py: schema, op router, database and service.

May import ``autobase_py``; nothing in ``autobase_py`` imports this package.
"""

from .entry import Entry
from .errors import IncompatibleSchemaError, SchemaError, ValidationError

__all__ = ["Entry", "IncompatibleSchemaError", "SchemaError", "ValidationError"]
