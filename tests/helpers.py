"""Shared test helpers: bounded polling instead of sleeps, small servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web


async def eventually(
    cond: Callable[[], Any | Awaitable[Any]],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``cond`` until it returns a truthy value, bounded by ``timeout_s``.

    ``cond`` may be sync or async; its last truthy result is returned so tests can assert on it.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        last = result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout_s}s (last: {last!r})")
        await asyncio.sleep(interval_s)


def wait_until(
    cond: Callable[[], Any],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    message: str = "condition",
) -> Any:
    """Blocking twin of :func:`eventually` for code that runs in a thread (pyodm is sync)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout_s}s (last: {last!r})")
        time.sleep(interval_s)


def write_atomically(path: Path, text: str) -> None:
    """Replace a file's content in one step, as operators are told to (write, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """``app`` served on a free loopback port, which is given; stopped afterwards."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site.port
    finally:
        await runner.cleanup()
