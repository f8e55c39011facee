"""FloodMonitor: refuses new task inits from a token that starts far more than it commits.

Rules as the original: +1 per init, -1 per commit (never below 0); every 15 minutes each count
is forgiven down to ``floor(count * 0.66)``; a token whose count exceeds the limit is flooding.
The clock is injected, so the decay is computed from elapsed time instead of a timer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

FORGIVE_EVERY_S = 15 * 60
FORGIVE_FACTOR = 0.66
DEFAULT_KEY = "default"  # the original counts requests without a token together


def flood_message() -> str:
    minutes = FORGIVE_EVERY_S // 60
    return (
        "Uuh, slow down! It seems like you are sending a lot of tasks. Check that your "
        f"connection is not dropping, or wait {minutes} minutes and try again."
    )


class FloodMonitor:
    def __init__(self, limit: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._epoch = clock()

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
