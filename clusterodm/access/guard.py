"""FailedTokenGuard: slows down token guessing, per client IP. Pure: clock injected.

Each wrong token from an IP is remembered for ``window_s``. Once an IP has ``limit`` wrong
tokens inside the window it is refused with 429 and a ``Retry-After`` until the oldest of those
falls out of the window; while refused its tokens are not even checked, so the answer says
nothing about whether a guess was right. Missing tokens are not counted (they guess nothing),
nor are tokens the provider could not check (``AuthUnavailable``: its service is down).
One IP's failures never affect another IP; a good token does not wipe an IP's record.

Original: no such limit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from clusterodm.errors import AuthError, ClusterError

MAX_TRACKED_IPS = 100_000  # beyond this, IPs whose failures all expired are dropped first


class AuthUnavailable(AuthError):
    """The token could not be checked (the provider's service is down): not a failed guess."""


class TooManyFailures(ClusterError):
    status = 429

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(
            "Too many failed authentication attempts from your address; "
            f"try again in {self.retry_after_s} seconds."
        )


class FailedTokenGuard:
    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str, now: float) -> deque[float] | None:
        times = self._failures.get(ip)
        if times is None:
            return None
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._failures[ip]
            return None
        return times

    def check(self, ip: str) -> None:
        """Raise TooManyFailures while ``ip`` is refused."""
        now = self._clock()
        times = self._recent(ip, now)
        if times is not None and len(times) >= self.limit:
            raise TooManyFailures(times[0] + self.window_s - now)

    def failed(self, ip: str) -> None:
        now = self._clock()
        times = self._recent(ip, now)
        if times is None:
            if len(self._failures) >= MAX_TRACKED_IPS:
                self._prune(now)
            times = self._failures.setdefault(ip, deque(maxlen=self.limit))
        times.append(now)

    def _prune(self, now: float) -> None:
        for ip in list(self._failures):
            self._recent(ip, now)
        while len(self._failures) >= MAX_TRACKED_IPS:
            del self._failures[next(iter(self._failures))]

    def failures(self, ip: str) -> int:
        times = self._recent(ip, self._clock())
        return len(times) if times else 0
