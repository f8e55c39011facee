"""Admin web: the /r/ JSON API with aiohttp, and the page in a real headless Chromium.

Chromium is Debian's (``.ci/run`` installs it); Playwright drives it through its executable
path. Without it the browser tests skip locally and fail under CI (``CI=true``).
Set ``ADMIN_SCREENSHOT=1`` to refresh ``docs/admin-web.png``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clusterodm.admin import AdminCommands, build_admin_app
from clusterodm.app import Cluster
from clusterodm.config import DispatchSettings
from tests.admin import make_task
from tests.chromium import chromium
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually

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
        for path in ("/", "/r/info", "/r/node/list", "/r/series", "/static/admin.js"):
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
        body = {"uuid": "6f1c2f9e-6a57-4b3e-9d43-1c8f3b0e6a11"}
        for action in ("cancel", "remove"):
            async with s.post(f"{base}/r/task/{action}", json=body) as r:
                assert r.status == 401, "task actions sit behind the admin password"
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
@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


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
    assert await page.locator("#tasks tbody tr").count() == 2
    assert await page.locator("#routes").count() == 0, "the task table says it all"
    names = await page.locator("#tasks tbody td:nth-child(2)").all_text_contents()
    assert names == ["survey <b>north</b>"] * 2, "user text is shown as text, never as HTML"
    assert "nodetok" not in await page.content()

    await c.stop()  # the page notices on its own
    await page.locator(".pill.offline").wait_for(timeout=15_000)
    why = page.locator(f'#nodes tr[data-name="{c.host}:{c.port}"] .why')
    assert "unreachable" in (await why.text_content() or ""), "why it is offline"
    assert problems == []


# --- what an operator sees and steers: task details, node capacity, charts ------------------
USERS_TOML = """
[[user]]
name = "alice"
token_sha256 = "{sha}"
"""


async def operator_cluster(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path, **kw: Any
) -> tuple[Cluster, Any, str]:
    """A cluster with users (alice's token is ``alice-token``), one one-slot node with a
    known capacity, a second node that is down, and fast task watching and sampling."""
    users = tmp_path / "users.toml"
    users.write_text(USERS_TOML.format(sha=hashlib.sha256(b"alice-token").hexdigest()))
    node = await simnode_factory(test_seconds=30, parallel=1, max_images=400)
    down = await simnode_factory()
    cluster = await cluster_factory(
        [node, down],
        users_file=str(users),
        task_watch_s=0.1,
        dispatch=DispatchSettings(backoff_base_s=0.05, backoff_max_s=0.2, queue_poll_s=0.1),
        **kw,
    )
    cluster.deps.events.series.step_s = 0.3
    await down.stop()
    await cluster.deps.health.refresh_all()
    return cluster, node, "alice-token"


async def new_task(cluster: Cluster, token: str, name: str, images: int) -> str:
    form = aiohttp.FormData()
    form.add_field("name", name)
    for i in range(images):
        form.add_field("images", b"x" * 2048, filename=f"i{i}.jpg")
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{cluster.url}/task/new", data=form, params={"token": token}) as r,
    ):
        return str((await r.json())["uuid"])


async def test_tasks_nodes_and_series_carry_what_the_page_shows(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster, node, token = await operator_cluster(simnode_factory, cluster_factory, tmp_path)
    running = await new_task(cluster, token, "first", 3)
    await eventually(lambda: running in node.tasks, message="first on the node")
    waiting = await new_task(cluster, token, "second", 2)
    await eventually(lambda: cluster.deps.dispatcher.queue_length() == 1)
    base = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:

        async def rows() -> dict[str, Any]:
            return {t["uuid"]: t for t in (await call(s, "GET", f"{base}/r/tasks"))[1]}

        await eventually(
            lambda: (
                cluster.deps.events.get(running) is not None
                and cluster.deps.events.get(running).running is not None
            ),  # type: ignore[union-attr]
            message="first seen running",
        )
        tasks = await rows()
        first, second = tasks[running], tasks[waiting]
        assert first["user"] == second["user"] == "alice"
        assert second["place"] == 1 and second["queueLength"] == 1 and first["place"] is None
        assert first["runningS"] is not None and first["runningS"] >= 0
        assert second["queuedS"] is not None and second["runningS"] is None
        assert isinstance(first["progress"], float)

        status, nodes = await call(s, "GET", f"{base}/r/node/list")
        up, down = nodes
        assert up["capacity"]["maxImages"] == 400 and up["capacity"]["maxParallelTasks"] == 1
        assert up["tasks"] == 1 and up["offlineReason"] is None
        assert down["isOnline"] is False and "unreachable" in down["offlineReason"]

        await eventually(lambda: len(cluster.deps.events.series.points) >= 2, timeout_s=10)
        status, series = await call(s, "GET", f"{base}/r/series")
        assert status == 200 and series["stepS"] == 0.3
        assert series["now"]["queue"] == 1 and series["now"]["running"] == 1
        assert {"t", "queue", "running", "finished", "bytesIn", "bytesOut"} <= set(
            series["points"][-1]
        )

        for bad in ({"uuid": "nope"}, {"uuid": 5}, {}):
            status, answer = await call(s, "POST", f"{base}/r/task/cancel", bad)
            assert status == 400 and "uuid" in answer["error"]
        ok = (200, {"success": True})
        assert await call(s, "POST", f"{base}/r/task/cancel", {"uuid": waiting}) == ok
        assert cluster.deps.dispatcher.queue_length() == 0
        assert await call(s, "POST", f"{base}/r/task/remove", {"uuid": running}) == ok
        status, answer = await call(s, "POST", f"{base}/r/task/cancel", {"uuid": running})
        assert status == 400 and "error" in answer, "a task no longer known"
        assert running not in node.tasks, "removed from its node"
        assert (await rows()).keys() == {waiting}


async def test_page_shows_task_details_node_capacity_and_charts_and_steers_tasks(
    browser: Any, simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster, node, token = await operator_cluster(
        simnode_factory, cluster_factory, tmp_path, admin_pass=PASSWORD
    )
    running = await new_task(cluster, token, "Quarry north", 3)
    await eventually(lambda: running in node.tasks, message="first on the node")
    waiting = [await new_task(cluster, token, f"Field {n}", 2) for n in ("east", "west")]
    await eventually(lambda: cluster.deps.dispatcher.queue_length() == 2)
    base = await serve_admin(cluster, PASSWORD)
    page, problems = await open_page(browser, base, PASSWORD)

    row = page.locator(f'#tasks tr[data-uuid="{running}"]')
    await row.locator(".pill.running").wait_for()
    assert await row.locator(".user").text_content() == "alice"
    assert re.fullmatch(r"\d+ %", await row.locator(".pct").text_content() or "")
    await page.wait_for_function(
        f"document.querySelector('#tasks tr[data-uuid=\"{running}\"] .t-running').textContent"
        ".endsWith(' s')"
    )
    last = page.locator(f'#tasks tr[data-uuid="{waiting[1]}"]')
    assert await last.locator(".t-place").text_content() == "2 of 2"
    assert (await last.locator(".t-queued").text_content() or "").endswith(" s")
    assert await last.locator(".t-running").text_content() == ""

    up = page.locator(f'#nodes tr[data-name="{node.host}:{node.port}"]')
    assert (await up.locator(".capacity").text_content() or "").startswith("≤ 400 images")
    assert await up.locator(".tasks").text_content() == "1"
    assert "unreachable" in (await page.locator("#nodes .why").text_content() or "")

    for chart in ("queue", "running", "finished", "bytes"):
        await page.wait_for_selector(f"#chart-{chart} svg path.line", state="attached")
    await page.wait_for_function(
        "Number(document.querySelector('#chart-queue').dataset.points) >= 4", timeout=15_000
    )
    assert await page.locator("#chart-bytes .key").all_text_contents() != []
    assert await page.locator("#chart-queue .key").text_content() == "waiting 2"

    await last.locator("button.cancel").click()
    await last.locator(".pill.canceled").wait_for()
    assert cluster.deps.dispatcher.queue_length() == 1
    assert await last.locator("button.cancel").count() == 0, "no Cancel once it ended"

    if os.environ.get("ADMIN_SCREENSHOT") == "1":
        await page.wait_for_function(
            "Number(document.querySelector('#chart-queue').dataset.points) >= 30", timeout=30_000
        )
        await page.screenshot(path=str(DOCS / "admin-web.png"), full_page=True)

    await last.locator("button.remove").click()
    await last.locator("button.remove.armed").wait_for()
    assert cluster.deps.table.get(waiting[1]) is not None, "the first click only arms it"
    await last.locator("button.remove").click()
    await last.wait_for(state="detached")
    assert cluster.deps.table.get(waiting[1]) is None
    assert problems == []


async def test_page_explains_a_task_its_node_forgot(
    browser: Any, simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=30)
    # no images kept: failover does not move the task, its route stays and points nowhere
    cluster = await cluster_factory([sim], dispatch=DispatchSettings(keep_images_bytes=0))
    uuid = await make_task(cluster)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://{sim.host}:{sim.port}/task/remove", data={"uuid": uuid}) as r,
    ):
        assert (await r.json())["success"] is True  # behind the cluster's back
    base = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:
        status, rows = await call(s, "GET", f"{base}/r/tasks")
    assert status == 200 and rows[0]["statusName"] == "lost"
    assert "no longer knows" in rows[0]["error"]
    page, problems = await open_page(browser, base, "")
    row = page.locator(f'#tasks tr[data-uuid="{uuid}"]')
    await row.locator(".pill.lost").wait_for()
    assert "no longer knows this task" in (await row.locator(".why").text_content() or "")
    assert problems == []
