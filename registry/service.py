"""A registry node: an Autobase whose view is a :class:`~registry.db.Registry`, fed by the op
router.

Theory of operation
===================

Writing. Every public write (``put_entry``, ``delete_entry``, ``add_writer``,
``remove_writer``) validates locally first (a :class:`~registry.errors.ValidationError`,
``InvalidKeyError`` or ``MembershipError`` is raised before anything is appended), encodes one
op with the declared op table (``registry/spec/registry.json``) and appends it to the local
oplog; ``append`` returns once the op is durable and applied to the local view.

Applying. The base calls :meth:`RegistryService._apply` once per atomic batch of value nodes,
in the linearized order, on every peer. It opens ONE registry transaction (one bee batch), and
routes each value through the :class:`~registry.ops.Router`:

* ``put-entry`` / ``delete-entry`` write the transaction;
* ``add-writer`` / ``remove-writer`` call the host, but only when the node's writer is an
  indexer at that point of the order (DESIGN §9: admin ops come from indexers); otherwise the
  op is skipped;
* a malformed value (undecodable, bad envelope, request failing its schema) is skipped;
* a well-formed op whose id this code does not know, or written under a newer schema version
  (the envelope's ``v``), makes apply call ``host.interrupt``: the base stops rather than
  diverge from newer nodes (upgrade, then reopen).

Ops carry their writer's schema version, and the database writes follow it (``db.py``): the
view is upgraded (v1 -> v2 migration) at the first op written by newer code, the same position
of the order on every peer.

Skips depend only on the value and the applied state, so every peer skips the same ops; each
is logged (logger ``registry.service``) with the writer and position. The transaction is
flushed once at the end (one view append per apply call), or discarded on interrupt.

Views. ``svc.view`` is the *local, optimistic* view: everything this node applied, including
nodes not yet confirmed by a quorum of indexers (they may still be reordered or, if their
writer is removed before confirmation, dropped). ``svc.confirmed_view()`` is what a reader
gets: the view pinned at the view length of the newest certificate (a checkpoint signed by a
majority of indexers). It never moves backwards and never changes once read. See
``docs/registry.md``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from autobase_py import ids
from autobase_py.base.core import Autobase
from autobase_py.base.host import ApplyHost, ApplyNode
from autobase_py.bee import Bee
from autobase_py.errors import ClosedError, MembershipError, NotWritableError
from autobase_py.log import Log
from autobase_py.store import Store

from .db import Registry, Transaction
from .entry import Entry, validate_name
from .errors import ValidationError
from .ops import Handler, NewerSchema, OpCodec, Request, Router, Skipped, UnknownOp
from .schema import Spec, load_spec

logger = logging.getLogger("registry.service")

MAX_RECENT_SKIPS = 64


@dataclass(slots=True)
class OpContext:
    """What an op handler may touch while one value is applied."""

    tx: Transaction
    host: ApplyHost
    writer: bytes


@dataclass(frozen=True, slots=True)
class SkippedOp:
    """A value that was skipped during apply (diagnostics; replays may log it again)."""

    writer: bytes
    length: int
    reason: str


async def _put_entry(req: Request, ctx: OpContext) -> Skipped | None:
    try:
        await ctx.tx.put_valid(req["entry"], version=req.schema_version)
    except ValidationError as exc:  # e.g. a field this code's schema version lacks
        return Skipped(f"put-entry: {exc.message}")
    return None


async def _delete_entry(req: Request, ctx: OpContext) -> Skipped | None:
    try:
        await ctx.tx.delete(req["name"], version=req.schema_version)
    except ValidationError as exc:  # empty or over-long name: never stored, nothing to delete
        return Skipped(f"delete-entry: {exc.message}")
    return None


def _admin(ctx: OpContext, op: str) -> Skipped | None:
    if not ctx.host.is_indexer(ctx.writer):
        return Skipped(f"{op}: writer {ids.encode(ctx.writer)} is not an indexer")
    return None


async def _add_writer(req: Request, ctx: OpContext) -> Skipped | None:
    refused = _admin(ctx, "add-writer")
    if refused is None:
        ctx.host.add_writer(req["key"], indexer=req["indexer"])
    return refused


async def _remove_writer(req: Request, ctx: OpContext) -> Skipped | None:
    refused = _admin(ctx, "remove-writer")
    if refused is None:
        ctx.host.remove_writer(req["key"])
    return refused


HANDLERS: dict[str, Handler[OpContext]] = {
    "put-entry": _put_entry,
    "delete-entry": _delete_entry,
    "add-writer": _add_writer,
    "remove-writer": _remove_writer,
}


class RegistryService:
    """Autobase + Registry view + op router. Open with :meth:`open`."""

    def __init__(self, router: Router[OpContext]) -> None:
        """Use :meth:`open`; a service is only usable once its base is attached."""
        self._router = router
        self._opened: Autobase[Registry] | None = None
        self.recent_skips: deque[SkippedOp] = deque(maxlen=MAX_RECENT_SKIPS)

    @classmethod
    async def open(
        cls,
        store: Store,
        bootstrap: bytes | str | None = None,
        *,
        spec: Spec | None = None,
        extra_handlers: Mapping[str, Handler[OpContext]] | None = None,
    ) -> RegistryService:
        """Open (or create) the registry in ``store``; ``bootstrap`` is the registry key to
        join. ``spec``/``extra_handlers`` exist for ops added by later versions (and tests)."""
        spec = spec if spec is not None else load_spec()
        service = cls(Router(spec, {**HANDLERS, **(extra_handlers or {})}))

        def open_view(log: Log) -> Registry:
            return Registry(Bee(log), spec)

        service._opened = await Autobase.open(
            store, bootstrap, apply=service._apply, open_view=open_view
        )
        return service

    # --- apply ------------------------------------------------------------------------------

    async def _apply(self, nodes: list[ApplyNode], view: Registry, host: ApplyHost) -> None:
        tx = view.transaction()
        for node in nodes:
            outcome = await self._router.dispatch(node.value, OpContext(tx, host, node.writer))
            if isinstance(outcome, (UnknownOp, NewerSchema)):
                tx.discard()
                logger.error(
                    "registry: stopping at op from %s (length %d): %s",
                    ids.encode(node.writer),
                    node.length,
                    outcome.reason,
                )
                host.interrupt(outcome.reason)
                return
            if isinstance(outcome, Skipped):
                self.recent_skips.append(SkippedOp(node.writer, node.length, outcome.reason))
                logger.warning(
                    "registry: skipped op from %s (length %d): %s",
                    ids.encode(node.writer),
                    node.length,
                    outcome.reason,
                )
        await tx.flush()

    # --- properties -------------------------------------------------------------------------

    @property
    def _base(self) -> Autobase[Registry]:
        if self._opened is None:
            raise ClosedError("the registry service is not open (use RegistryService.open)")
        return self._opened

    @property
    def base(self) -> Autobase[Registry]:
        return self._base

    @property
    def codec(self) -> OpCodec:
        """The op codec (encodes op values exactly as the service appends them)."""
        return self._router.codec

    @property
    def view(self) -> Registry:
        """The local (optimistic) view: includes entries not yet confirmed."""
        return self._base.view

    def reading(self) -> AbstractAsyncContextManager[Registry]:
        """``async with svc.reading() as view:``: the local view between two apply cycles,
        never half-applied (appends and updates wait meanwhile; see ``Autobase.reading``)."""
        return self._base.reading()

    @property
    def key(self) -> bytes:
        return self._base.key

    @property
    def local_key(self) -> bytes:
        return self._base.local_key

    def confirmed_view(self) -> Registry:
        """The view at the confirmed prefix: what every peer has agreed on (no tip)."""
        return self.view.at(self._base.confirmed_view_length)

    def signed_view(self) -> Registry:
        """What a reader that trusts only certificates gets: the view at the newest
        certificate (empty before the first); may lag ``confirmed_view`` by one exchange."""
        cert = self._base.certificate
        length = 0 if cert is None else cert.checkpoint.view_length
        return self.view.at(length)

    # --- writes -----------------------------------------------------------------------------

    async def _append(self, values: list[bytes]) -> int:
        if not self._base.writable:
            raise NotWritableError(
                f"{ids.encode(self._base.local_key)} is not a writer of this registry"
            )
        return await self._base.append(values)

    async def put_entry(self, entry: Entry | Mapping[str, Any]) -> int:
        """Validate, then append a ``put-entry`` op; returns the local oplog length."""
        return await self.put_entries([entry])

    async def put_entries(self, entries: Iterable[Entry | Mapping[str, Any]]) -> int:
        """Validate all, then append one ``put-entry`` op each as ONE atomic batch."""
        parsed = [Entry.parse(e) for e in entries]
        for e in parsed:
            self.view.layout.check(e)  # fields this schema version lacks: refuse locally
        if not parsed:
            return self._base.local_log.length
        return await self._append(self._router.codec.encode_parsed_entries(parsed))

    async def delete_entry(self, name: str) -> int:
        """Append a ``delete-entry`` op (deleting a missing name is a no-op when applied)."""
        op = self._router.codec.encode("delete-entry", {"name": validate_name(name)})
        return await self._append([op])

    def _require_indexer(self, op: str) -> None:
        if not self._base.membership.is_indexer(self._base.local_key):
            raise MembershipError(f"{op}: only an indexer may change the writer set")

    async def add_writer(self, key: bytes | str, *, indexer: bool = True) -> int:
        """Append an ``add-writer`` op (also re-roles an existing writer)."""
        k = ids.normalize(key)
        self._require_indexer("add-writer")
        op = self._router.codec.encode("add-writer", {"key": k, "indexer": indexer})
        return await self._append([op])

    async def remove_writer(self, key: bytes | str) -> int:
        """Append a ``remove-writer`` op; removing the last indexer raises MembershipError."""
        k = ids.normalize(key)
        self._require_indexer("remove-writer")
        membership = self._base.membership
        if membership.is_indexer(k) and len(membership.indexers) <= 1:
            raise MembershipError(f"cannot remove the last indexer {ids.encode(k)}")
        op = self._router.codec.encode("remove-writer", {"key": k})
        return await self._append([op])

    async def close(self) -> None:
        await self._base.close()


__all__ = ["HANDLERS", "OpContext", "RegistryService", "SkippedOp"]
