"""The shared upload rate limit: a token bucket."""

from __future__ import annotations

import asyncio
import time

from clusterodm.nodes.ratelimit import RateLimiter


async def test_holds_the_rate_over_many_acquires() -> None:
    limiter = RateLimiter(1_000_000, burst_s=0.05)
    start = time.monotonic()
    for _ in range(20):
        await limiter.acquire(25_000)  # 500 KB in all at 1 MB/s
    elapsed = time.monotonic() - start
    assert elapsed >= 0.4, f"500 KB at 1 MB/s took only {elapsed:.2f}s"


async def test_concurrent_callers_share_one_bucket() -> None:
    limiter = RateLimiter(2_000_000, burst_s=0.05)
    start = time.monotonic()
    await asyncio.gather(*(limiter.acquire(200_000) for _ in range(5)))  # 1 MB at 2 MB/s
    assert time.monotonic() - start >= 0.4


async def test_small_amounts_pass_at_once() -> None:
    limiter = RateLimiter(10_000_000)
    start = time.monotonic()
    await limiter.acquire(1000)
    assert time.monotonic() - start < 0.1
