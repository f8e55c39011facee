"""Webhook delivery: POST a finished task's info to its hooks, retried as NodeODM does.

Deliveries are owned here (not stray tasks): :meth:`WebhookSender.close` cancels and awaits them,
so a stopped node never calls out again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

#: Waits between the 6 tries NodeODM makes when a hook fails (non-200 or network error).
RETRY_WAITS_S = (0.0, 5.0, 10.0, 15.0, 20.0)
_TIMEOUT = aiohttp.ClientTimeout(total=15, sock_connect=5)


class WebhookSender:
    """Sends webhook bodies in the background with bounded retries."""

    def __init__(self, retry_waits_s: tuple[float, ...] = RETRY_WAITS_S) -> None:
        self._retry_waits_s = retry_waits_s
        self._session: aiohttp.ClientSession | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    def send(self, urls: list[str | None], body: dict[str, Any]) -> None:
        """Deliver ``body`` to each URL longer than 3 characters (NodeODM's own test)."""
        for url in urls:
            if url is not None and len(url) > 3:
                job = asyncio.create_task(self._deliver(url, body))
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        for attempt, wait_s in enumerate((*self._retry_waits_s, None)):
            try:
                async with self._session.post(url, json=body) as response:
                    if response.status == 200:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, ValueError) as error:
                problem = repr(error)
            log.warning("webhook %s failed (try %d): %s", url, attempt + 1, problem)
            if wait_s is None:
                return
            await asyncio.sleep(wait_s)

    async def close(self) -> None:
        """Cancel pending deliveries and close the HTTP session."""
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
