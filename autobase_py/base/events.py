"""Events a base reports: ``is-indexer``, ``is-non-indexer``, ``writable``, ``unwritable``,
``confirmed``, ``certified``, ``error``, ``interrupted``.

Each call to :meth:`EventHub.subscribe` gives an independent async iterator fed by a bounded
trio memory channel. Publishing never blocks the base: a subscriber that falls more than
``capacity`` events behind loses the oldest excess events and is told how many in a
``dropped`` event, instead of stalling the apply loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio

KINDS = frozenset(
    {
        "is-indexer",
        "is-non-indexer",
        "writable",
        "unwritable",
        "confirmed",
        "certified",
        "error",
        "interrupted",
        "dropped",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.detail:
            return self.kind
        parts = ", ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.kind} ({parts})"


class _Subscriber:
    def __init__(self, capacity: int) -> None:
        self.send, self.receive = trio.open_memory_channel[Event](capacity)
        self.dropped = 0


class EventHub:
    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._subscribers: list[_Subscriber] = []
        self.history: list[Event] = []  # the last few events, for status output and tests
        self._closed = False

    def publish(self, kind: str, **detail: Any) -> Event:
        assert kind in KINDS, kind
        event = Event(kind, detail)
        self.history.append(event)
        del self.history[:-256]
        for sub in list(self._subscribers):
            try:
                if sub.dropped:
                    sub.send.send_nowait(Event("dropped", {"count": sub.dropped}))
                    sub.dropped = 0
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(sub)
        return event

    def subscribe(self) -> AsyncIterator[Event]:
        sub = _Subscriber(self._capacity)
        if self._closed:
            sub.send.close()
        else:
            self._subscribers.append(sub)
        return _Subscription(sub)

    def close(self) -> None:
        self._closed = True
        for sub in self._subscribers:
            sub.send.close()
        self._subscribers.clear()


class _Subscription:
    """An async iterator over one subscriber's channel (no async generator to finalize)."""

    def __init__(self, sub: _Subscriber) -> None:
        self._receive = sub.receive

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._receive.aclose()


__all__ = ["KINDS", "Event", "EventHub"]
