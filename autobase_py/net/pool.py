"""Which server a failover client should try next (sans-IO; time and randomness passed in).

Each server is *available* unless it failed recently: after a failure it rests for a jittered,
doubling backoff (``base * 2**(failures-1)`` capped at ``cap``, times a factor drawn from
``[0.5, 1.5)``), so many clients that lost the same server do not come back in lockstep. A
success resets it. ``pick`` chooses uniformly at random among the available servers not
already tried for this call; when none is available, ``next_available`` says when one will be.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import LocalError

DEFAULT_BACKOFF_BASE = 0.1
DEFAULT_BACKOFF_CAP = 5.0


@dataclass(slots=True)
class ServerState:
    failures: int = 0
    retry_at: float = 0.0


class ServerChoice:
    """Health bookkeeping for ``count`` servers, identified by index."""

    def __init__(
        self,
        count: int,
        *,
        rng: random.Random | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
    ) -> None:
        if count < 1:
            raise LocalError("a pool needs at least one server")
        self.servers = [ServerState() for _ in range(count)]
        self.rng = rng if rng is not None else random.Random()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap

    def available(self, index: int, now: float) -> bool:
        return self.servers[index].retry_at <= now

    def pick(self, now: float, exclude: frozenset[int] = frozenset()) -> int | None:
        """A random available server not in ``exclude``; falls back to excluded available ones
        (a single-server pool retries its one server); None when all are resting."""
        ready = [i for i in range(len(self.servers)) if self.available(i, now)]
        fresh = [i for i in ready if i not in exclude]
        candidates = fresh or ready
        return self.rng.choice(candidates) if candidates else None

    def next_available(self) -> float:
        return min(s.retry_at for s in self.servers)

    def failed(self, index: int, now: float) -> float:
        """Record a failure; returns when the server may be tried again."""
        state = self.servers[index]
        state.failures += 1
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (state.failures - 1))
        state.retry_at = now + delay * self.rng.uniform(0.5, 1.5)
        return state.retry_at

    def succeeded(self, index: int) -> None:
        state = self.servers[index]
        state.failures = 0
        state.retry_at = 0.0


__all__ = ["DEFAULT_BACKOFF_BASE", "DEFAULT_BACKOFF_CAP", "ServerChoice", "ServerState"]
