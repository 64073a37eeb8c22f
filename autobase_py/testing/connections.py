"""Waiting on connections in tests."""

from __future__ import annotations

from typing import Protocol

import trio


class _Closable(Protocol):
    @property
    def closed(self) -> trio.Event: ...


async def closed_within(seconds: float, *connections: _Closable) -> bool:
    """Wait until one of ``connections`` closes, for at most ``seconds``; whether one did.

    For tests that expect a connection to stay up: they wait on the event that would show
    it failing (and see it at once if it comes) instead of sleeping blindly."""
    any_closed = trio.Event()

    async def watch(connection: _Closable) -> None:
        await connection.closed.wait()
        any_closed.set()

    async with trio.open_nursery() as nursery:
        for connection in connections:
            nursery.start_soon(watch, connection)
        with trio.move_on_after(seconds):
            await any_closed.wait()
        nursery.cancel_scope.cancel()
    return any_closed.is_set()


__all__ = ["closed_within"]
