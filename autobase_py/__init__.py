"""autobase_py: many writers, one deterministic view.

Signed append-only logs (Hypercore's Merkle rules), a causal-DAG linearizer with quorum
confirmation, an apply loop into a B-tree view, and encrypted replication. See DESIGN.md and
``docs/`` for the theory; each subpackage's header says what it owns.
"""

from .errors import AutobaseError

__version__ = "0.1.0"

__all__ = ["AutobaseError", "__version__"]
