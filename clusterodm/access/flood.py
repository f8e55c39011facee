"""FloodMonitor: refuses new task inits from a token that starts far more than it commits.

Rules as the original: +1 per init, -1 per commit (never below 0); every 15 minutes each count
is forgiven down to ``floor(count * 0.66)``; a token whose count exceeds the limit is flooding.
The clock is injected, so the decay is computed from elapsed time instead of a timer.

With a shared store (several instances) the counts are the store's (``counter``, a
``DecayingCounter``: the Store), so a token is counted across the whole cluster: the same rule,
applied in one atomic step where all instances count (rounds from the counter set's first use,
on the wall clock, which the instances share).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

FORGIVE_EVERY_S = 15 * 60
FORGIVE_FACTOR = 0.66
DEFAULT_KEY = "default"  # the original counts requests without a token together
COUNTER = "flood"


class DecayingCounter(Protocol):
    """Where the counts live when several instances share them (``Store.count``)."""

    async def count(
        self, name: str, key: str, delta: int, now_ms: int, every_ms: int, factor: float
    ) -> int: ...


def flood_message() -> str:
    minutes = FORGIVE_EVERY_S // 60
    return (
        "Uuh, slow down! It seems like you are sending a lot of tasks. Check that your "
        f"connection is not dropping, or wait {minutes} minutes and try again."
    )


class FloodMonitor:
    def __init__(
        self,
        limit: int | None,
        clock: Callable[[], float] = time.monotonic,
        counter: DecayingCounter | None = None,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._epoch = clock()
        #: set with a shared store (then ``clock`` must be the wall clock, shared by instances)
        self.counter = counter

    @property
    def enabled(self) -> bool:
        return self.limit is not None and self.limit > 0

    def _decay(self) -> None:
        rounds = int((self._clock() - self._epoch) // FORGIVE_EVERY_S)
        if rounds <= 0:
            return
        self._epoch += rounds * FORGIVE_EVERY_S
        for key in list(self._counts):
            count = self._counts[key]
            for _ in range(min(rounds, 64)):
                count = math.floor(count * FORGIVE_FACTOR)
                if count <= 0:
                    break
            if count <= 0:
                del self._counts[key]
            else:
                self._counts[key] = count

    def record_init(self, token: str) -> bool:
        """Count an init; True if the token is now flooding (the init must be refused)."""
        if not self.enabled:
            return False
        self._decay()
        key = token or DEFAULT_KEY
        self._counts[key] = self._counts.get(key, 0) + 1
        assert self.limit is not None
        return self._counts[key] > self.limit

    def record_commit(self, token: str) -> None:
        if not self.enabled:
            return
        self._decay()
        key = token or DEFAULT_KEY
        if key in self._counts:
            self._counts[key] = max(self._counts[key] - 1, 0)

    def count(self, token: str) -> int:
        self._decay()
        return self._counts.get(token or DEFAULT_KEY, 0)

    # --- the form the intake uses: local counts, or the cluster's with a shared store --------
    async def check_init(self, token: str) -> bool:
        """``record_init``, counted where ``counter`` says."""
        if self.counter is None or not self.enabled:
            return self.record_init(token)
        assert self.limit is not None
        return await self._count(token, 1) > self.limit

    async def note_commit(self, token: str) -> None:
        """``record_commit``, counted where ``counter`` says."""
        if self.counter is None or not self.enabled:
            self.record_commit(token)
        else:
            await self._count(token, -1)

    async def shared_count(self, token: str) -> int:
        return await self._count(token, 0) if self.counter is not None else self.count(token)

    async def _count(self, token: str, delta: int) -> int:
        assert self.counter is not None
        now_ms = int(self._clock() * 1000)
        every_ms = FORGIVE_EVERY_S * 1000
        return await self.counter.count(
            COUNTER, token or DEFAULT_KEY, delta, now_ms, every_ms, FORGIVE_FACTOR
        )
