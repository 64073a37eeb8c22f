"""The signed append-only log (the Hypercore equivalent) on top of :class:`Storage`.

Theory of operation
-------------------
State. A log's tree lives in a table of its own (one row per node, each block in its leaf
node's row) and so does most of its header: the length is the one whose last root is the last
row, the byte length the sum of its roots, the signature is kept in that row; the fork and
the frozen flag are in the ``logs`` row (see :mod:`autobase_py.storage`). Memory holds only
the header and the roots of the current length (at most 64 nodes). Storage keys nodes by
their :func:`~.flat_tree.post_order` position (the order appends create them), so an append
writes one run of rows at the table's right end and a truncation deletes one range; this
module speaks flat indices and converts at each storage call (``_nodes``, ``_pos``). A
*writable* log holds its signer's key pair and stores every block and every node; a *replica*
knows only the key until a proof brings the manifest, and may be sparse: it stores the blocks
it was sent plus every node it verified (the roots of its length, upgrade nodes, and the
uncles on each block's path).

Invariant: every stored node is trusted (verified against a signed tree or computed locally),
and the roots of the current length are stored. That is what lets a replica verify a block
proof by hashing up to *any* stored node, and serve proofs for the blocks it holds; and, as
every stored node lies in the tree of the current length, the last stored row is the last
root, which is how the stored rows give the length.

Writes. ``append`` hashes the new leaves, folds completed subtrees into parents (a new length
``n`` folds ``trailing_zeros(n)`` times), signs the new tree hash once per call, and writes
the tree rows (blocks in their leaves, the signature in the last) with one ``executemany``
of plain INSERTs at the table's right end, and nothing else, in one storage transaction
(joining the caller's if one is open). ``truncate`` cuts blocks and the nodes whose span
reaches past the cut (one ``DELETE``), bumps the fork and re-signs. ``apply_proof`` verifies
everything (manifest, fork, upgrade nodes, signature, block path) with pure functions from
:mod:`.proof` before it touches storage, then stores the result in one transaction.
``apply_range`` / ``apply_blocks`` do the same for a contiguous range: the same checks, then
the blocks hashed bottom-up once up to the trusted roots (every node of the proof used), then
blocks and nodes stored with one ``executemany``. In-memory state changes only inside those
transactions and the log enlists in them, so a rollback anywhere reloads it from disk.

Forks. A replica follows a newer fork only through an upgrade from 0 (all roots); it keeps
the subtrees under new roots it already stores with equal hashes and drops the rest.

Equivocation. A valid signature for the replica's own (length, fork) over a different tree hash
freezes the log (persisted) and raises :class:`EquivocationError`; every later write raises
:class:`LogFrozenError`.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Mapping, Sequence
from typing import cast

from .. import crypto
from ..errors import (
    BlockNotAvailableError,
    DecodeError,
    EquivocationError,
    InvalidProofError,
    InvalidSignatureError,
    LocalError,
    LogFrozenError,
    NotWritableError,
    OutOfRangeError,
)
from ..storage import LogRow, SignedRow, Storage
from . import flat_tree
from .merkle import Manifest, Node, signable, tree_hash
from .proof import (
    BlockProof,
    Proof,
    ProofNode,
    RangeProof,
    UpgradeProof,
    derive_roots,
    range_uncles,
    upgrade_walk,
    verify_block_path,
    verify_range,
)

_pos = flat_tree.post_order
_leaf_pos = flat_tree.leaf_post_order
_RECENT = 64  # how many earlier lengths' roots a log keeps in memory
_first = operator.itemgetter(0)


class ProofMismatchError(InvalidProofError):
    """The proof was built for another state of this replica (an older fork, another start
    length): nothing is wrong with the sender, ask again with the current length."""

    code = "PROOF_MISMATCH"


class Log:
    """A signed append-only log stored in a :class:`Storage`. Create with :meth:`create`
    (writable, from a key pair) or :meth:`replica` (from a key), or through ``Store.get``."""

    def __init__(self, storage: Storage, row: LogRow, key_pair: crypto.KeyPair | None) -> None:
        self.storage = storage
        self._id = row.id
        self.key = row.key
        self.discovery_key = crypto.discovery_key(row.key)
        self.key_pair = key_pair
        self.name = row.name
        self.manifest: Manifest | None = None
        self.length = 0
        self.fork = 0
        self.byte_length = 0
        self.signature: bytes | None = None
        self.frozen = False
        # A signed append that a peer may already hold must survive power loss, or this
        # writer would later sign a different block at the same length. Logs whose content
        # is a deterministic function of others (a base's view) may turn this off.
        self.durable_appends = True
        # A log that nobody verifies by its own signature (a base's view: readers check it
        # against a quorum certificate's tree hash) may skip signing; it then has no signed
        # length and cannot serve upgrade proofs.
        self.signed_appends = True
        self._roots: list[Node] = []
        # the roots of lengths this log had since it was loaded (a writer's undo truncates
        # back to one of them, and readers ask for their tree hashes): at most _RECENT
        self._recent: dict[int, list[Node]] = {}
        self._load(row)

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, storage: Storage, key_pair: crypto.KeyPair, name: str | None = None
    ) -> Log:
        """Open (or create) the writable log whose signer is ``key_pair``."""
        manifest = Manifest.single(key_pair.public_key)
        key = manifest.key()
        row = storage.find_log(key=key)
        if row is None:
            row = storage.create_log(key, manifest.encode(), name)
        elif row.manifest is None:
            storage.set_manifest(row.id, manifest.encode())
            row.manifest = manifest.encode()
        return cls(storage, row, key_pair)

    @classmethod
    def replica(cls, storage: Storage, key: bytes) -> Log:
        """Open (or create) a replica of the log ``key``; it learns the manifest from proofs."""
        if len(key) != crypto.PUBLIC_KEY_BYTES:
            raise OutOfRangeError(f"log key must be 32 bytes, got {len(key)}")
        row = storage.find_log(key=key)
        if row is None:
            row = storage.create_log(key, None)
        return cls(storage, row, None)

    def _load(self, row: LogRow) -> None:
        self.manifest = None if row.manifest is None else Manifest.decode(row.manifest)
        self.length = row.length
        self.fork = row.fork
        self.byte_length = row.byte_length
        self.signature = row.signature
        self.frozen = row.frozen
        self._roots = self._stored_roots(row.length)
        self._recent = {}

    def reload(self) -> None:
        """Re-read the header and roots from storage (after a rolled-back transaction)."""
        row = self.storage.find_log(key=self.key)
        if row is None:  # the transaction that created this log rolled back: recreate it
            manifest = self.manifest.encode() if self.key_pair and self.manifest else None
            row = self.storage.create_log(self.key, manifest, self.name)
        self._id = row.id
        self._load(row)

    def _stored_roots(self, length: int) -> list[Node]:
        indices = flat_tree.full_roots(length)
        found = self._nodes(indices)
        roots = []
        for index in indices:
            if index not in found:
                raise BlockNotAvailableError(f"tree node {index} for length {length} not stored")
            size, digest = found[index]
            roots.append(Node(index, size, digest))
        return roots

    def _nodes(self, indices: list[int]) -> dict[int, ProofNode]:
        """{flat index: (size, hash)} of those of ``indices`` that are stored (one query)."""
        if not indices:
            return {}
        positions = {_pos(i): i for i in indices}
        got = self.storage.get_nodes(self._id, list(positions))
        return {positions[p]: node for p, node in got.items()}

    # --- reading -----------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self.key_pair is not None

    def __repr__(self) -> str:
        return f"Log(key={self.key.hex()[:16]}.., length={self.length}, fork={self.fork})"

    def get(self, index: int) -> bytes:
        if not 0 <= index < self.length:
            raise BlockNotAvailableError(f"block {index} is past the log's length {self.length}")
        block = self.storage.get_block(self._id, _leaf_pos(index))
        if block is None:
            raise BlockNotAvailableError(f"block {index} is not stored locally")
        return block

    def get_run(self, start: int, end: int) -> list[bytes]:
        """The stored blocks from ``start`` on, up to ``end`` (clamped to the length) or the
        first one not stored locally, whichever comes first; one query."""
        end = min(end, self.length)
        if not 0 <= start < end:
            return []
        run: list[bytes] = []
        expect = _leaf_pos(start)  # the next block's leaf position
        for position, block in self.storage.get_blocks(self._id, expect, _leaf_pos(end)):
            if position != expect:
                break
            run.append(block)
            expect = _leaf_pos(start + len(run))
        return run

    def has(self, index: int) -> bool:
        return 0 <= index < self.length and self.storage.has_block(self._id, _leaf_pos(index))

    def roots(self, length: int | None = None) -> list[Node]:
        """The roots of ``length`` (default: the current length)."""
        if length is None or length == self.length:
            return list(self._roots)
        if not 0 <= length <= self.length:
            raise OutOfRangeError(f"length {length} is past the log's length {self.length}")
        recent = self._recent.get(length)
        return list(recent) if recent is not None else self._stored_roots(length)

    def tree_hash(self, length: int | None = None) -> bytes:
        return tree_hash(self.roots(length))

    def signable(self) -> bytes:
        """The 112 bytes the current signature covers."""
        return signable(self.key, tree_hash(self._roots), self.length, self.fork)

    # --- writing -----------------------------------------------------------------------------

    def _check_writable(self) -> crypto.KeyPair:
        if self.frozen:
            raise LogFrozenError(f"log {self.key.hex()[:16]} is frozen after equivocation")
        if self.key_pair is None:
            raise NotWritableError("this log is a replica; it has no signing key")
        return self.key_pair

    def append(self, blocks: Sequence[bytes]) -> int:
        """Append ``blocks`` under one signature; return the new length."""
        key_pair = self._check_writable()
        if isinstance(cast(object, blocks), (bytes, bytearray)):
            raise LocalError("append takes a sequence of blocks, not one bytes object")
        if not blocks:
            return self.length
        roots = list(self._roots)
        # Rows go straight to storage as (position, size, hash, block, signature), each block
        # in its leaf's row, the signature in the last (the new last root's); the new nodes'
        # positions are consecutive
        row = _leaf_pos(self.length)
        rows: list[SignedRow] = []
        add = rows.append
        length = self.length
        byte_length = self.byte_length
        blake2b = hashlib.blake2b
        for block in blocks:
            if type(block) is not bytes:
                raise LocalError(f"blocks must be bytes, got {type(block).__name__}")
            size = len(block)
            index = 2 * length
            digest = blake2b(
                b"\x00" + size.to_bytes(8, "little") + block, digest_size=32
            ).digest()
            add((row, size, digest, block, None))
            row += 1
            byte_length += size
            length += 1
            folds = (length & -length).bit_length() - 1
            depth = 0
            while folds:
                left = roots.pop()
                index = left.index + (1 << depth)  # parent of a left child at this depth
                size += left.size
                digest = blake2b(
                    b"\x01" + size.to_bytes(8, "little") + left.hash + digest, digest_size=32
                ).digest()
                add((row, size, digest, None, None))
                row += 1
                depth += 1
                folds -= 1
            roots.append(Node(index, size, digest))
        signature = (
            crypto.sign(
                signable(self.key, tree_hash(roots), length, self.fork), key_pair.secret_key
            )
            if self.signed_appends
            else None
        )
        if signature is not None:
            rows[-1] = (*rows[-1][:4], signature)
        storage = self.storage
        with storage.transaction():
            storage.enlist(self)
            if self.durable_appends:
                storage.require_sync()
            # the signature goes into the row of the new last root (the last row written,
            # at the table's right end); no header row is written
            storage.append_tree(self._id, rows)
            recent = self._recent
            recent[self.length] = self._roots
            if len(recent) > _RECENT:
                del recent[next(iter(recent))]
            self.length = length
            self.byte_length = byte_length
            self.signature = signature
            self._roots = roots
        return length

    def truncate(self, length: int) -> None:
        """Cut the log to ``length`` blocks, bump the fork and re-sign (writable logs only)."""
        key_pair = self._check_writable()
        if not 0 <= length <= self.length:
            raise OutOfRangeError(f"cannot truncate to {length}: the length is {self.length}")
        recent = self._recent.get(length)
        roots = list(recent) if recent is not None else self._stored_roots(length)
        fork = self.fork + 1
        signature = (
            crypto.sign(signable(self.key, tree_hash(roots), length, fork), key_pair.secret_key)
            if self.signed_appends
            else None
        )
        byte_length = sum(r.size for r in roots)
        storage = self.storage
        with storage.transaction():
            storage.enlist(self)
            if self.durable_appends:
                storage.require_sync()
            storage.truncate_log(self._id, _leaf_pos(length))
            storage.write_log_state(
                self._id, fork, None if length else signature, frozen=self.frozen
            )
            if length:  # the previous last root is gone, or it is this one
                storage.set_signature(self._id, _leaf_pos(length) - 1, signature)
            # lengths above the cut will hold other blocks
            self._recent = {n: r for n, r in self._recent.items() if n < length}
            self.length = length
            self.fork = fork
            self.byte_length = byte_length
            self.signature = signature
            self._roots = roots

    # --- proofs ------------------------------------------------------------------------------

    def _node(self, index: int) -> ProofNode:
        found = self.storage.get_node(self._id, _pos(index))
        if found is None:
            raise BlockNotAvailableError(f"tree node {index} is not stored; cannot prove")
        return found

    def _upgrade_proof(self, upgrade_from: int) -> tuple[UpgradeProof, list[int]]:
        """The upgrade from ``upgrade_from`` to our length (its sent nodes read in one query),
        and every flat index the walk passes (what a verifier will trust afterwards)."""
        if not 0 <= upgrade_from <= self.length:
            raise OutOfRangeError(
                f"cannot upgrade from {upgrade_from}: the length is {self.length}"
            )
        if self.signature is None:
            raise BlockNotAvailableError("this log has no signed length to prove")
        walk = list(upgrade_walk(upgrade_from, self.length))
        wanted = [node for step, node in walk if step == "sent"]
        got = self._nodes(wanted)
        sent = [got[n] if n in got else self._node(n) for n in wanted]  # _node raises
        upgrade = UpgradeProof(upgrade_from, self.length, tuple(sent), self.signature)
        return upgrade, [node for _, node in walk]

    def proof(self, index: int | None, upgrade_from: int | None = None) -> Proof:
        """A proof for block ``index`` and/or an upgrade from ``upgrade_from`` to our length.

        ``upgrade_from`` is the verifier's current length at our fork (0 for a fresh replica or
        one on an older fork): the proof then carries what derives our roots from its roots,
        plus our signature (and the manifest when it is 0). With an upgrade, the block's uncles
        stop at the first node the verifier will trust after it. Without one, they run up to
        our root over the block; a verifier that trusts any length > ``index`` finds a trusted
        node on the way (its own root over the block) and ignores the rest.
        """
        upgrade = None
        target: set[int]
        if upgrade_from is not None:
            upgrade, walked = self._upgrade_proof(upgrade_from)
            target = set(walked)
        else:
            target = {r.index for r in self._roots}
        block = None
        if index is not None:
            value = self.get(index)
            wanted: list[int] = []
            node = 2 * index
            while node not in target:
                wanted.append(flat_tree.sibling(node))
                node = flat_tree.parent(node)
            found = self._nodes(wanted)
            if len(found) != len(wanted):
                missing = next(i for i in wanted if i not in found)
                raise BlockNotAvailableError(f"tree node {missing} is not stored; cannot prove")
            block = BlockProof(index, value, tuple(found[i] for i in wanted))
        manifest = None
        if upgrade_from == 0 and self.manifest is not None:
            manifest = self.manifest.encode()
        return Proof(fork=self.fork, block=block, upgrade=upgrade, manifest=manifest)

    def apply_proof(self, proof: Proof, *, trusted_tree_hash: bytes | None = None) -> None:
        """Verify ``proof`` completely, then store what it proves in one transaction.

        Raises InvalidProofError / InvalidSignatureError (ProofMismatchError when the proof was
        made for another state of this replica), or EquivocationError (the log is then frozen);
        on any error nothing is stored. With ``trusted_tree_hash`` the upgrade is checked
        against that hash (from a quorum certificate) instead of requiring a valid signature.
        """
        if self.frozen:
            raise LogFrozenError(f"log {self.key.hex()[:16]} is frozen after equivocation")
        manifest, new_manifest = self._proof_manifest(proof)
        if proof.fork < self.fork:
            raise ProofMismatchError(f"proof is for fork {proof.fork}; the log is at {self.fork}")
        fork_change = proof.fork > self.fork
        kept: list[tuple[int, int]] = []  # flat spans still valid after a fork change
        trusted: dict[int, ProofNode] = {}
        learned: list[Node] = []
        header: tuple[int, int, bytes | None] | None = None  # (length, byte length, signature)
        roots = self._roots  # of the header, once an upgrade is verified
        length = self.length
        if proof.upgrade is not None:
            header = self._verify_upgrade(
                proof.upgrade,
                fork=proof.fork,
                fork_change=fork_change,
                manifest=manifest,
                trusted_tree_hash=trusted_tree_hash,
                learned=learned,
            )
            length = header[0]
            roots = self._upgraded_roots(length, learned, fork_change)
            for node in learned:
                trusted[node.index] = (node.size, node.hash)
            if fork_change:
                kept = self._unchanged_subtrees(length, trusted)
        elif fork_change:
            raise ProofMismatchError("a proof from a newer fork must carry an upgrade from 0")
        block = proof.block
        if block is not None:
            if block.index >= length:
                raise InvalidProofError(f"block {block.index} is past the proven length {length}")
            # what this replica already stores on the block's path (still valid after a
            # fork change only inside the subtrees the new fork did not touch)
            path = [2 * block.index]
            for _ in block.nodes:
                path.append(flat_tree.parent(path[-1]))
            if fork_change:
                path = [i for i in path if any(a <= i <= b for a, b in kept)]
            stored = self._nodes(path)
            stored.update(trusted)
            trusted = stored
            learned.extend(verify_block_path(block, trusted.get))
        # Everything is verified: store it.
        storage = self.storage
        with storage.transaction():
            storage.enlist(self)
            if fork_change:
                storage.retain_runs(self._id, _runs(kept))
            if new_manifest is not None:
                storage.set_manifest(self._id, new_manifest)
            leaf, value = (-1, None) if block is None else (2 * block.index, block.value)
            if learned:
                storage.put_tree(
                    self._id,
                    sorted(
                        (
                            (_pos(n.index), n.size, n.hash, value if n.index == leaf else None)
                            for n in learned
                        ),
                        key=_first,
                    ),
                )
            if block is not None and all(n.index != leaf for n in learned):
                # its leaf was stored already
                storage.put_block(self._id, _leaf_pos(block.index), block.value)
            if header is not None:
                self._adopt_header(header, proof.fork, manifest, roots, fork_change)

    def range_proof(
        self,
        start: int,
        end: int,
        upgrade_from: int | None = None,
        *,
        max_bytes: int | None = None,
        block_overhead: int = 0,
    ) -> RangeProof:
        """A proof for blocks ``[start, end)`` (all stored here) and/or an upgrade from
        ``upgrade_from`` to our length (as in :meth:`proof`). Its uncles are the nodes outside
        the range that hash it up to the roots of our length, so without an upgrade it fits a
        replica whose length is ours (one behind takes the upgrade from its length). With
        ``max_bytes`` the range ends at the first block where the blocks so far (each counted
        with ``block_overhead`` more bytes) reach it."""
        if not 0 <= start < end <= self.length:
            raise OutOfRangeError(f"range [{start}, {end}) is not inside length {self.length}")
        upgrade = None if upgrade_from is None else self._upgrade_proof(upgrade_from)[0]
        values = tuple(self.get_run(start, end))
        if len(values) != end - start:
            self.get(start + len(values))  # raises BlockNotAvailableError naming the block
        if max_bytes is not None:
            values = values[: blocks_within(values, max_bytes, block_overhead)]
            end = start + len(values)
        wanted = range_uncles(start, end, self.length)
        found = self._nodes(wanted)
        if len(found) != len(wanted):
            missing = next(i for i in wanted if i not in found)
            raise BlockNotAvailableError(f"tree node {missing} is not stored; cannot prove")
        manifest = None
        if upgrade_from == 0 and self.manifest is not None:
            manifest = self.manifest.encode()
        return RangeProof(
            fork=self.fork,
            start=start,
            values=values,
            length=self.length,
            nodes=tuple(found[i] for i in wanted),
            upgrade=upgrade,
            manifest=manifest,
        )

    def apply_range(self, proof: RangeProof, *, trusted_tree_hash: bytes | None = None) -> None:
        """Verify a :class:`RangeProof` completely, then store its blocks, every node it proves
        and the upgraded header in one transaction (errors as :meth:`apply_proof`; on any
        error nothing is stored). The blocks are hashed bottom-up once, up to the roots of the
        replica's length (after the upgrade, if any), which must be ``proof.length``
        (ProofMismatchError otherwise), so that every node of the proof is used and checked."""
        if self.frozen:
            raise LogFrozenError(f"log {self.key.hex()[:16]} is frozen after equivocation")
        if proof.upgrade is not None and proof.upgrade.length != proof.length:
            raise InvalidProofError("range proof length differs from its upgrade's length")
        end = proof.start + len(proof.values)
        if not proof.values or end > proof.length:
            raise InvalidProofError(
                f"range [{proof.start}, {end}) is not inside the proof's length {proof.length}"
            )
        wanted = range_uncles(proof.start, end, proof.length)
        if len(wanted) != len(proof.nodes):
            raise InvalidProofError(
                f"range proof carries {len(proof.nodes)} nodes; {len(wanted)} expected"
            )
        self._apply_range(
            proof.fork,
            proof.start,
            proof.values,
            dict(zip(wanted, proof.nodes, strict=True)),
            upgrade=proof.upgrade,
            manifest=proof.manifest,
            trusted_tree_hash=trusted_tree_hash,
            length=proof.length,
        )

    def apply_blocks(
        self, fork: int, start: int, values: Sequence[bytes], nodes: Mapping[int, ProofNode]
    ) -> None:
        """Verify blocks ``[start, start + len(values))`` against this replica's roots with
        the tree ``nodes`` given by flat index (those outside the range are used to hash it up
        to the roots; those it recomputes must match; those above the roots are ignored), then
        store them in one transaction (errors as :meth:`apply_proof`, nothing stored)."""
        self._apply_range(fork, start, values, nodes)

    def _apply_range(
        self,
        fork: int,
        start: int,
        values: Sequence[bytes],
        nodes: Mapping[int, ProofNode],
        *,
        upgrade: UpgradeProof | None = None,
        manifest: bytes | None = None,
        trusted_tree_hash: bytes | None = None,
        length: int | None = None,
    ) -> None:
        """Verify and store a range; ``length`` (when given) is the length whose roots the
        nodes were chosen for, which must be the one the replica trusts: then every node is
        used, so every byte of the proof is checked."""
        if self.frozen:
            raise LogFrozenError(f"log {self.key.hex()[:16]} is frozen after equivocation")
        # the same checks, in the same order, as apply_proof
        known, new_manifest = self._proof_manifest(Proof(fork, None, upgrade, manifest))
        if fork < self.fork:
            raise ProofMismatchError(f"proof is for fork {fork}; the log is at {self.fork}")
        fork_change = fork > self.fork
        kept: list[tuple[int, int]] = []
        learned: list[Node] = []
        header: tuple[int, int, bytes | None] | None = None
        anchors = self._roots
        if upgrade is not None:
            header = self._verify_upgrade(
                upgrade,
                fork=fork,
                fork_change=fork_change,
                manifest=known,
                trusted_tree_hash=trusted_tree_hash,
                learned=learned,
            )
            anchors = self._upgraded_roots(header[0], learned, fork_change)
            if fork_change:
                kept = self._unchanged_subtrees(
                    header[0], {n.index: (n.size, n.hash) for n in learned}
                )
        elif fork_change:
            raise ProofMismatchError("a proof from a newer fork must carry an upgrade from 0")
        elif length is not None and length != self.length:
            raise ProofMismatchError(
                f"range proof is for length {length}; the replica trusts {self.length}"
            )
        # our roots are stored (and stay so unless the fork changes): uncles equal to them
        # need no rewrite, which would dirty their old pages
        stored = None if fork_change else {r.index: (r.size, r.hash) for r in self._roots}
        node_rows = verify_range(start, values, anchors, nodes, stored=stored)
        # Everything is verified: store it.
        node_rows.extend((_pos(n.index), n.size, n.hash, None) for n in learned)
        storage = self.storage
        with storage.transaction():
            storage.enlist(self)
            if fork_change:
                storage.retain_runs(self._id, _runs(kept))
            if new_manifest is not None:
                storage.set_manifest(self._id, new_manifest)
            # in ascending positions: appended at the right end of the log's table, no
            # rebalancing (a 100-block catch-up wrote 19.3 WAL frames per commit, 16.0 sorted)
            node_rows.sort(key=_first)  # stable: a repeated node keeps its last row last
            storage.put_tree(self._id, node_rows)
            if header is not None:
                self._adopt_header(header, fork, known, list(anchors), fork_change)

    def _upgraded_roots(self, length: int, learned: list[Node], fork_change: bool) -> list[Node]:
        """The roots of ``length`` after a verified upgrade: the nodes it proved, plus (same
        fork) the old roots it kept."""
        proven = {n.index: n for n in learned}
        if not fork_change:
            proven.update((r.index, r) for r in self._roots if r.index not in proven)
        return [proven[i] for i in flat_tree.full_roots(length)]

    def _adopt_header(
        self,
        header: tuple[int, int, bytes | None],
        fork: int,
        manifest: Manifest,
        roots: list[Node],
        fork_change: bool,
    ) -> None:
        """Store a verified (length, byte length, signature) and take it, with the roots it
        was verified with, in memory without re-reading anything (inside the caller's
        transaction, which reloads us if it rolls back)."""
        length, _, signature = header
        storage = self.storage
        if fork_change or not length:
            storage.write_log_state(
                self._id, fork, None if length else signature, frozen=self.frozen
            )
        if length:  # even None: the row may hold the signature of an earlier length
            storage.set_signature(self._id, _leaf_pos(length) - 1, signature)
        self.length, self.byte_length, self.signature = header
        if fork_change:
            self._recent = {}
        self.fork = fork
        self.manifest = manifest
        self._roots = roots

    def _unchanged_subtrees(
        self, length: int, proven: dict[int, ProofNode]
    ) -> list[tuple[int, int]]:
        """Flat spans of the new fork's roots that this replica already stores with the same
        size and hash: equal root hashes mean equal subtrees, so what it holds there stays."""
        roots = flat_tree.full_roots(length)
        stored = self._nodes(roots)
        return [
            (flat_tree.left_span(r), flat_tree.right_span(r))
            for r in roots
            if r in stored and stored[r] == proven.get(r)
        ]

    def _proof_manifest(self, proof: Proof) -> tuple[Manifest, bytes | None]:
        """(the manifest to verify with, its bytes if newly learned from this proof)."""
        if self.manifest is not None:
            if proof.manifest is not None and proof.manifest != self.manifest.encode():
                raise InvalidProofError("proof carries a different manifest")
            return self.manifest, None
        if proof.manifest is None:
            raise ProofMismatchError("the replica does not know the manifest; upgrade from 0")
        try:
            manifest = Manifest.decode(proof.manifest)
        except DecodeError as exc:
            raise InvalidProofError(f"proof carries a bad manifest: {exc.message}") from exc
        if manifest.key() != self.key:
            raise InvalidProofError("manifest does not hash to the log key")
        return manifest, proof.manifest

    def _verify_upgrade(
        self,
        upgrade: UpgradeProof,
        *,
        fork: int,
        fork_change: bool,
        manifest: Manifest,
        trusted_tree_hash: bytes | None,
        learned: list[Node],
    ) -> tuple[int, int, bytes | None]:
        """Check an upgrade; append its new nodes to ``learned``; return the new header."""
        # Accepted shapes: a newer fork from 0; an extension from our length; a restatement
        # of our own length from 0 (what exposes an equivocating signer).
        if fork_change:
            if upgrade.start != 0:
                raise ProofMismatchError("an upgrade to a newer fork must start at 0")
        elif upgrade.start != self.length and not (
            upgrade.start == 0 and upgrade.length == self.length
        ):
            raise ProofMismatchError(
                f"upgrade {upgrade.start}->{upgrade.length} does not start at the replica's "
                f"length {self.length}"
            )
        old = {r.index: (r.size, r.hash) for r in self._roots}
        roots, new_nodes = derive_roots(upgrade.start, upgrade.length, upgrade.nodes, old.get)
        tree = tree_hash(roots)
        message = signable(self.key, tree, upgrade.length, fork)
        signed = crypto.verify(message, upgrade.signature, manifest.public_key)
        if trusted_tree_hash is not None:
            if tree != trusted_tree_hash:
                raise InvalidProofError("upgrade roots do not match the trusted tree hash")
        elif not signed:
            raise InvalidSignatureError(f"bad signature for length {upgrade.length}, fork {fork}")
        same_point = not fork_change and upgrade.length == self.length and self.length > 0
        if same_point and signed and tree != tree_hash(self._roots):
            self._freeze()
            raise EquivocationError(
                f"two signed trees for length {self.length}, fork {fork}: log frozen"
            )
        learned.extend(new_nodes)
        signature = upgrade.signature if signed else None
        return upgrade.length, sum(r.size for r in roots), signature

    def _freeze(self) -> None:
        with self.storage.transaction():
            self.storage.enlist(self)
            self.storage.write_log_state(
                self._id, self.fork, None if self.length else self.signature, frozen=True
            )
            self.frozen = True


def _runs(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (first, last) storage positions of the subtrees with these flat spans."""
    return [(_leaf_pos(left // 2), _pos((left + right) // 2)) for left, right in spans]


def blocks_within(values: Sequence[bytes], max_bytes: int, block_overhead: int = 0) -> int:
    """How many of ``values`` an answer capped at ``max_bytes`` carries: up to and including
    the first block where the blocks so far (each counted with ``block_overhead`` more bytes)
    reach the cap; all of them if they never do."""
    size = 0
    for count, value in enumerate(values, 1):
        size += len(value) + block_overhead
        if size >= max_bytes:
            return count
    return len(values)


__all__ = ["Log", "ProofMismatchError", "blocks_within"]
