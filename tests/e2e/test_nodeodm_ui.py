"""NodeODM's own web UI through the cluster, in Chromium, in front of the real NodeODM (#14).

The page loads, images go in through its file input, the task runs to "Completed", its download
link gives a valid all.zip, and two reloads (conditional requests: If-None-Match, 304) leave the
cluster answering ``/info`` within a second.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.chromium import chromium
from tests.conftest import ClusterFactory

INFO_WITHIN_S = 1.0


async def info_time(url: str) -> float:
    timeout = aiohttp.ClientTimeout(total=INFO_WITHIN_S)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"{url}/info") as r:
        assert r.status == 200
        await r.json()
    return time.monotonic() - t0


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Chromium with its HTTP cache on (request interception would turn it off, and with it the
    conditional requests of a reload); names other than loopback do not resolve, so the page's
    CDN jQuery fails at once and its local copy is used."""
    async with chromium("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1") as b:
        yield b


async def test_nodeodm_web_ui_through_the_cluster(
    browser: Any,
    real_node_factory: Any,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
) -> None:
    node = await real_node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    base = cluster.url
    files = []
    for i in range(3):
        p = tmp_path / f"ui{i}.jpg"
        p.write_bytes(b"\xff\xd8\xff\xe0" + bytes([i]) * 20_000 + b"\xff\xd9")
        files.append(str(p))

    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(20_000)
    statuses: dict[str, list[int]] = {}
    conditional: list[str] = []

    async def note_request(request: Any) -> None:
        if "if-none-match" in await request.all_headers():
            conditional.append(request.url)

    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", note_request)
    page.on(
        "response",
        lambda r: statuses.setdefault(r.url.split("?")[0].removeprefix(base), []).append(r.status),
    )
    try:
        await page.goto(base + "/")
        await page.wait_for_selector("#btnSelectFiles")
        await page.set_input_files("input.dz-hidden-input", files)
        # the name field sits in a collapsed panel; the page reads its value when it starts
        await page.eval_on_selector("#taskName", "(e, v) => { e.value = v; }", "from the browser")
        await page.click("input[type=submit][value='Start Task']")
        task = page.locator(".task", has_text="from the browser")
        await task.locator("text=Completed").wait_for(timeout=60_000)
        link = task.locator("a", has_text="All Assets")
        href = await link.get_attribute("href")
        assert href and "/download/all.zip" in href
        async with aiohttp.ClientSession() as s, s.get(base + href) as r:
            assert r.status == 200
            archive = await r.read()
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            assert z.testzip() is None
            assert z.namelist()

        for _ in range(2):
            await page.reload()
            await page.wait_for_selector("#btnSelectFiles")
            assert await info_time(base) < INFO_WITHIN_S
    finally:
        await context.close()

    assert not errors, errors
    # the reloads revalidated the page and its files (If-None-Match), and nothing failed
    assert f"{base}/" in conditional, (conditional, statuses)
    failed = {path: codes for path, codes in statuses.items() if any(c >= 400 for c in codes)}
    assert not failed, failed
    assert await info_time(base) < INFO_WITHIN_S
    assert len(node.images(href.split("/")[2])) == 3
