"""The AI-model registry on autobase_py: schema, op router, database and service.

May import ``autobase_py``; nothing in ``autobase_py`` imports this package. The service
(``registry.service.RegistryService``) is imported from its module so that using the
database alone does not pull in the base.
"""

from .db import Registry, Transaction
from .entry import Entry
from .errors import IncompatibleSchemaError, SchemaError, ValidationError

__all__ = [
    "Entry",
    "IncompatibleSchemaError",
    "Registry",
    "SchemaError",
    "Transaction",
    "ValidationError",
]
