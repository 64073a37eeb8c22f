"""The causal-DAG linearizer with quorum confirmation (pure, synchronous, no I/O).

``Linearizer`` orders writers' nodes deterministically and confirms ever longer prefixes of
that order once a majority of indexers has voted; see ``core.py`` for the theory of operation
and ``docs/consensus.md`` for the rule and its safety argument.
"""

from __future__ import annotations

from .core import Linearizer
from .node import Node, NodeKey, Update

__all__ = ["Linearizer", "Node", "NodeKey", "Update"]
