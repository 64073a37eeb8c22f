"""The signed append-only log: Hypercore's Merkle rules, proofs, and a SQLite-backed Log.

Modules: ``flat_tree`` (node numbering), ``merkle`` (hashes, tree hash, signable, manifest),
``proof`` (proof types, wire form, pure verification), ``core`` (the :class:`Log`).
See ``docs/log.md`` for the proof semantics.
"""

from __future__ import annotations

from .core import Log, ProofMismatchError, blocks_within
from .merkle import (
    DEFAULT_NAMESPACE,
    MANIFEST,
    TREE,
    Manifest,
    Node,
    Signer,
    leaf_hash,
    parent_hash,
    signable,
    tree_hash,
)
from .proof import (
    BlockProof,
    Proof,
    ProofNode,
    RangeProof,
    UpgradeProof,
    decode_proof,
    encode_proof,
    range_uncles,
    verify_block_path,
    verify_range,
    verify_roots_against,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "MANIFEST",
    "TREE",
    "BlockProof",
    "Log",
    "Manifest",
    "Node",
    "Proof",
    "ProofMismatchError",
    "ProofNode",
    "RangeProof",
    "Signer",
    "UpgradeProof",
    "blocks_within",
    "decode_proof",
    "encode_proof",
    "leaf_hash",
    "parent_hash",
    "range_uncles",
    "signable",
    "tree_hash",
    "verify_block_path",
    "verify_range",
    "verify_roots_against",
]
