"""Admin web: the /r/ JSON API with aiohttp, and the page in a real headless Chromium.

Chromium is Debian's (``.ci/run`` installs it); Playwright drives it through its executable
path. Without it the browser tests skip locally and fail under CI (``CI=true``).
Set ``ADMIN_SCREENSHOT=1`` to refresh ``docs/admin-web.png``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clusterodm.admin import AdminCommands, build_admin_app
from clusterodm.app import Cluster
from tests.admin import make_task
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually

CHROMIUM = Path("/usr/lib/chromium/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
PASSWORD = "pä ss:word"


async def serve_admin(cluster: Cluster, password: str = "") -> str:
    """Serve the admin web of ``cluster`` on a free port; its base URL."""
    site = await cluster.add_site(
        "admin-web", build_admin_app(AdminCommands(cluster.deps), password), 0
    )
    return f"http://127.0.0.1:{site.port}"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def call(
    s: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with s.request(method, url, json=body, **kw) as r:
        return r.status, await r.json()


# --- the JSON API ------------------------------------------------------------------------
async def test_info_and_node_list_shapes(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory(), await simnode_factory(token="tok")])
    base = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:
        status, info = await call(s, "GET", f"{base}/r/info")
        assert status == 200
        assert info["name"] == "ClusterODM" and info["nodes"] == 2 and info["onlineNodes"] == 2
        status, nodes = await call(s, "GET", f"{base}/r/node/list")
    assert status == 200 and [n["number"] for n in nodes] == [1, 2]
    first = nodes[0]
    assert first["isOnline"] is True and first["isLocked"] is False
    assert first["getEngineInfo"] == "odm ?" and first["getMaxParallelTasks"] == 1
    assert set(first["nodeData"]) == {"hostname", "port", "info", "lastRefreshed"}
    assert isinstance(first["nodeData"]["port"], str)
    assert "tok" not in repr(nodes[1]["nodeData"]), "node tokens are never exposed"


async def test_add_lock_unlock_delete(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory()
    base = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:
        body = {"hostname": sim.host, "port": str(sim.port), "token": ""}
        assert await call(s, "POST", f"{base}/r/node/add", body) == (
            200,
            {"success": True, "number": 1},
        )
        status, answer = await call(s, "POST", f"{base}/r/node/add", body)
        assert status == 400 and "already exists" in answer["error"]
        await eventually(lambda: cluster.registry.online_nodes(), timeout_s=10)

        name = f"{sim.host}:{sim.port}"
        assert await call(s, "POST", f"{base}/r/node/lock", {"number": 1}) == (200, True)
        assert cluster.registry.get(name).locked  # type: ignore[union-attr]
        unlock = {"number": 1, "name": name}
        assert await call(s, "POST", f"{base}/r/node/unlock", unlock) == (200, True)
        assert not cluster.registry.get(name).locked  # type: ignore[union-attr]
        assert await call(s, "POST", f"{base}/r/node/lock", {"number": 2}) == (200, False)
        status, answer = await call(s, "DELETE", f"{base}/r/node", {"number": 1, "name": "x:1"})
        assert status == 409 and "reload" in answer["error"]
        assert await call(s, "DELETE", f"{base}/r/node", {"number": 1}) == (200, True)
        assert cluster.registry.nodes() == []
        assert await call(s, "DELETE", f"{base}/r/node", {"number": 1}) == (200, False)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/r/node/add", {"port": 3000}),
        ("POST", "/r/node/add", {"hostname": "h", "port": "x"}),
        ("POST", "/r/node/add", {"hostname": "h", "port": 70000}),
        ("POST", "/r/node/add", {"hostname": "h", "port": 1, "token": 5}),
        ("POST", "/r/node/add", {"hostname": "bad/host", "port": 1}),
        ("POST", "/r/node/add", [1, 2]),
        ("POST", "/r/node/lock", {}),
        ("POST", "/r/node/unlock", {"number": True}),
        ("DELETE", "/r/node", {"number": -1}),
        ("DELETE", "/r/node", {"number": 1.5}),
    ],
)
async def test_bad_input_is_a_json_400(
    cluster_factory: ClusterFactory, method: str, path: str, body: Any
) -> None:
    base = await serve_admin(await cluster_factory())
    async with aiohttp.ClientSession() as s:
        status, answer = await call(s, method, base + path, body)
    assert status == 400 and isinstance(answer["error"], str)


async def test_non_json_bodies_and_unknown_paths(cluster_factory: ClusterFactory) -> None:
    base = await serve_admin(await cluster_factory())
    async with aiohttp.ClientSession() as s:
        # a form post (what a foreign page can send without a preflight) changes nothing
        async with s.post(f"{base}/r/node/add", data={"hostname": "h", "port": "1"}) as r:
            assert r.status == 400 and "JSON" in (await r.json())["error"]
        headers = {"Content-Type": "application/json"}
        async with s.post(f"{base}/r/node/lock", data=b"\xff{nope", headers=headers) as r:
            assert r.status == 400 and (await r.json())["error"] == "Body is not valid JSON"
        async with s.post(f"{base}/r/node/lock", data=b"x" * 200_000, headers=headers) as r:
            assert r.status == 413
        assert (await call(s, "GET", f"{base}/r/nope"))[0] == 404
        assert (await call(s, "GET", f"{base}/r/node/add"))[0] == 405
        assert (await call(s, "GET", f"{base}/r/tasks?limit=abc"))[0] == 400


async def test_tasks_and_routes(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=30)
    cluster = await cluster_factory([sim])
    uuid = await make_task(cluster)
    base = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:
        status, tasks = await call(s, "GET", f"{base}/r/tasks")
        assert status == 200 and [(t["uuid"], t["number"]) for t in tasks] == [(uuid, 1)]
        assert tasks[0]["node"] == f"{sim.host}:{sim.port}"
        status, routes = await call(s, "GET", f"{base}/r/routes?limit=5")
        assert status == 200 and routes[0]["uuid"] == uuid and routes[0]["accessed"] > 0


async def test_basic_auth_on_every_path(cluster_factory: ClusterFactory) -> None:
    base = await serve_admin(await cluster_factory(), PASSWORD)
    async with aiohttp.ClientSession() as s:
        for path in ("/", "/r/info", "/r/node/list", "/static/admin.js"):
            async with s.get(base + path) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith('Basic realm="ClusterODM"')
        for headers in (
            basic("admin", "wrong"),
            basic("root", PASSWORD),
            {"Authorization": "Basic !!!"},
            {"Authorization": "Bearer x"},
        ):
            async with s.get(f"{base}/r/info", headers=headers) as r:
                assert r.status == 401
        async with s.get(f"{base}/r/info", headers=basic("admin", PASSWORD)) as r:
            assert r.status == 200
        async with s.get(f"{base}/signout", headers=basic("admin", PASSWORD)) as r:
            assert r.status == 401


async def test_page_and_static_files_are_self_contained(cluster_factory: ClusterFactory) -> None:
    base = await serve_admin(await cluster_factory())
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/") as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
        for asset, kind in (
            ("admin.css", "text/css"),
            ("admin.js", "javascript"),
            ("favicon.svg", "image/svg+xml"),
        ):
            assert f"/static/{asset}" in page
            async with s.get(f"{base}/static/{asset}") as r:
                assert r.status == 200 and kind in r.content_type
                assert "//cdn" not in await r.text()
    assert "http://" not in page and "https://" not in page


# --- the page in Chromium ----------------------------------------------------------------
def _have_chromium() -> bool:
    return CHROMIUM.exists()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not _have_chromium():
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("playwright is not installed (pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser: Any, base: str, password: str) -> tuple[Any, list[str]]:
    """A logged-in page that records (and blocks) any request leaving loopback."""
    context = await browser.new_context(
        http_credentials={"username": "admin", "password": password},
        viewport={"width": 1360, "height": 900},
    )
    context.set_default_timeout(10_000)
    outside: list[str] = []

    async def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(base):
            await route.continue_()
        else:
            outside.append(url)
            await route.abort()

    await context.route("**/*", only_loopback)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + "/")
    return page, outside + errors


async def test_page_add_lock_remove_a_node(
    browser: Any, simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory(admin_pass=PASSWORD)
    base = await serve_admin(cluster, PASSWORD)
    page, problems = await open_page(browser, base, PASSWORD)
    await page.wait_for_selector("#nodes-empty:not([hidden])")
    assert await page.is_hidden("#no-password"), "a password is set"

    await page.fill("#add-hostname", sim.host)
    await page.fill("#add-port", str(sim.port))
    await page.click("#add-button")
    row = page.locator(f'#nodes tr[data-name="{sim.host}:{sim.port}"]')
    await row.locator(".pill.status.online").wait_for()
    assert "Added" in (await page.text_content("#message") or "")
    assert await row.locator("td").nth(0).text_content() == "1"
    assert await row.locator(".queue").text_content() == "0/1"

    await row.locator("button.lock").click()
    await row.locator(".pill.flag", has_text="L").wait_for()
    assert cluster.registry.nodes()[0].locked
    await row.locator("button.unlock").click()
    await row.locator("button.lock").wait_for()
    assert not cluster.registry.nodes()[0].locked

    await row.locator("button.remove").click()
    await row.locator("button.remove.armed").wait_for()
    assert len(cluster.registry.nodes()) == 1, "the first click only arms the button"
    await row.locator("button.remove").click()
    await row.wait_for(state="detached")
    assert cluster.registry.nodes() == []
    assert problems == []


async def test_page_shows_tasks_and_routes_and_updates_itself(
    browser: Any, simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    a = await simnode_factory(test_seconds=60)
    b = await simnode_factory(test_seconds=60, token="nodetok")
    c = await simnode_factory()
    cluster = await cluster_factory([a, b, c])
    await cluster.registry.set_locked(f"{b.host}:{b.port}", True)
    uuids = [await make_task(cluster, images=n) for n in (3, 5)]
    base = await serve_admin(cluster)
    page, problems = await open_page(browser, base, "")
    await page.wait_for_selector(f'#tasks tr[data-uuid="{uuids[0]}"]')
    assert await page.is_visible("#no-password")
    assert await page.locator("#nodes tbody tr").count() == 3
    assert await page.locator(".pill.offline").count() == 0
    assert await page.locator("#routes tbody tr").count() == 2
    names = await page.locator("#tasks tbody td:nth-child(2)").all_text_contents()
    assert names == ["survey <b>north</b>"] * 2, "user text is shown as text, never as HTML"
    assert "nodetok" not in await page.content()

    await c.stop()  # the page notices on its own
    await page.locator(".pill.offline").wait_for(timeout=15_000)
    if os.environ.get("ADMIN_SCREENSHOT") == "1":
        await page.screenshot(path=str(DOCS / "admin-web.png"), full_page=True)
    assert problems == []
