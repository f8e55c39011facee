"""Headless Chromium for the tests that drive web pages (Playwright on Debian's chromium)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/lib/chromium/chromium")


@contextlib.asynccontextmanager
async def chromium(*args: str) -> AsyncIterator[Any]:
    """A Chromium browser started with ``args``, closed afterwards. Without Chromium or
    Playwright the test skips with the reason, and fails under CI, which installs both."""
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(args)
        )
        try:
            yield browser
        finally:
            await browser.close()


def _missing() -> str | None:
    """What is missing to drive Chromium, if anything."""
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None
