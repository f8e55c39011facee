"""A shared byte-rate limit for uploads to nodes (``--upload-max-speed``): a token bucket.

All uploads draw from one bucket, so the cap holds for the cluster as a whole, as in the
original. Waiting happens in the caller's task: no background timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self, bytes_per_s: float, burst_s: float = 0.25, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if bytes_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(bytes_per_s)
        self.capacity = max(self.rate * burst_s, 1.0)
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` bytes may be sent. Larger than the bucket: paid for in debt."""
        async with self._lock:
            self._refill()
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)
                self._refill()
