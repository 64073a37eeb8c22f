"""Several nodes in one process, each on its own real store folder, for tests.

``Cluster(root, opener)`` opens node ``name`` on ``root / name`` with
``await opener(store, bootstrap, **options)``; ``restart(name)`` closes the node and its store
and opens both again from disk (as a process restart would); ``close()`` closes everything.
The opener decides what a node is: an ``Autobase`` with some app, a ``RegistryService``, ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ..store import Store


class _Node(Protocol):
    @property
    def key(self) -> bytes: ...

    async def close(self) -> None: ...


N = TypeVar("N", bound=_Node)
Opener = Callable[..., Awaitable[N]]


class Cluster(Generic[N]):
    def __init__(self, root: Path, opener: Opener[N]) -> None:
        self.root = root
        self._opener = opener
        self.stores: dict[str, Store] = {}
        self.nodes: dict[str, N] = {}

    async def open(self, name: str, bootstrap: bytes | None = None, **options: Any) -> N:
        store = self.stores.get(name)
        if store is None:
            store = Store.open(self.root / name)
            self.stores[name] = store
        node = await self._opener(store, bootstrap, **options)
        self.nodes[name] = node
        return node

    async def restart(self, name: str) -> N:
        node = self.nodes[name]
        await node.close()
        self.stores.pop(name).close()
        return await self.open(name, node.key)

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.close()
        for store in self.stores.values():
            store.close()


__all__ = ["Cluster"]
