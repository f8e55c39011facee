"""Task life cycle: queueing, progress, cancel, restart, remove, webhooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from clusterodm.simnode import TaskStatus
from tests.helpers import eventually

from .conftest import StartNode, create_task, fields_form, get_json, post_json


class HookSink:
    """A small webhook receiver on loopback recording each JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(text="ok")


@pytest.fixture
async def hooks() -> AsyncIterator[HookSink]:
    sink = HookSink()
    app = web.Application()
    app.router.add_post("/hook", sink.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sink.url = f"http://127.0.0.1:{site.port}/hook"
    yield sink
    await runner.cleanup()


async def test_queue_with_one_slot(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    node = await start_node(test_seconds=2, parallel=1)
    first = await create_task(http, node.url)
    second = await create_task(http, node.url)

    await eventually(lambda: node.tasks[second].status == TaskStatus.QUEUED, message="queued")
    assert node.tasks[first].status == TaskStatus.RUNNING
    _, info = await get_json(http, f"{node.url}/info")
    assert info["taskQueueCount"] == 2
    _, second_info = await get_json(http, f"{node.url}/task/{second}/info")
    assert second_info["status"]["code"] == 10 and second_info["processingTime"] == -1
    # cancel frees the slot at once: the queued task starts
    await post_json(http, f"{node.url}/task/cancel", data={"uuid": first})
    await eventually(lambda: node.tasks[second].status == TaskStatus.RUNNING, message="started")
    assert node.tasks[first].status == TaskStatus.CANCELED


async def test_progress_climbs(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    node = await start_node(test_seconds=1.0)
    uuid = await create_task(http, node.url)

    async def mid_run() -> dict[str, Any] | None:
        _, info = await get_json(http, f"{node.url}/task/{uuid}/info")
        return info if info["status"]["code"] == 20 and 0 < info["progress"] < 90 else None

    first = await eventually(mid_run, message="progress between 0 and 100")
    lines_then = len((await get_json(http, f"{node.url}/task/{uuid}/output"))[1])
    later = await eventually(
        lambda: node.tasks[uuid].progress > first["progress"] + 10, message="progress climbs"
    )
    assert later
    _, info = await get_json(http, f"{node.url}/task/{uuid}/info")
    assert info["processingTime"] > max(0, first["processingTime"])
    assert len((await get_json(http, f"{node.url}/task/{uuid}/output"))[1]) > lines_then


async def test_cancel_stops_and_restart_runs_again(
    start_node: StartNode, http: aiohttp.ClientSession
) -> None:
    node = await start_node(test_seconds=0.6)
    uuid = await create_task(http, node.url)
    await eventually(lambda: node.tasks[uuid].status == TaskStatus.RUNNING, message="running")
    assert (await post_json(http, f"{node.url}/task/cancel", data={"uuid": uuid}))[1] == {
        "success": True
    }
    lines = len(node.tasks[uuid].output)
    await asyncio.sleep(0.8)  # longer than the run: a stopped task must stay cancelled
    assert node.tasks[uuid].status == TaskStatus.CANCELED
    assert len(node.tasks[uuid].output) == lines
    _, info = await get_json(http, f"{node.url}/task/{uuid}/info")
    assert info["processingTime"] == -1
    new_options = '[{"name": "dsm", "value": true}]'
    _, body = await post_json(
        http, f"{node.url}/task/restart", data={"uuid": uuid, "options": new_options}
    )
    assert body == {"success": True}
    assert node.tasks[uuid].output == [] or node.tasks[uuid].status == TaskStatus.RUNNING
    await eventually(lambda: node.tasks[uuid].status == TaskStatus.COMPLETED, message="rerun")
    # new options get the post-processing defaults again, as at creation (NodeODM does this)
    assert [o["name"] for o in node.tasks[uuid].options] == ["dsm", "pc-ept", "cog", "gltf"]


async def test_webhooks(
    start_node: StartNode, http: aiohttp.ClientSession, hooks: HookSink
) -> None:
    node = await start_node(test_seconds=0.2, webhook=hooks.url)
    done = await create_task(http, node.url, fields={"name": "w", "webhook": hooks.url})
    await eventually(lambda: len(hooks.bodies) == 2, message="two hooks (task and node)")
    body = hooks.bodies[0]
    assert body["uuid"] == done and body["status"] == {"code": 40} and "output" not in body
    assert [image["filename"] for image in body["images"]] == ["a.jpg", "b.jpg"]
    # a removed task fires no webhook
    node.config.test_seconds = 0.5
    removed = await create_task(http, node.url)
    await eventually(lambda: node.tasks[removed].status == TaskStatus.RUNNING, message="running")
    assert (await post_json(http, f"{node.url}/task/remove", json={"uuid": removed}))[1] == {
        "success": True
    }
    assert removed not in node.tasks
    _, body = await get_json(http, f"{node.url}/task/{removed}/info")
    assert body == {"error": f"{removed} not found"}
    marker = await create_task(http, node.url)  # ends after the removed one would have
    await eventually(lambda: len(hooks.bodies) == 3, message="hook of the next task")
    await asyncio.sleep(0.1)
    assert [b["uuid"] for b in hooks.bodies] == [done, done, marker]


async def test_failing_tasks(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    node = await start_node(test_seconds=0.1, test_fail_tasks=True)
    uuid = await create_task(http, node.url)
    await eventually(lambda: node.tasks[uuid].status == TaskStatus.FAILED, message="failed")
    _, info = await get_json(http, f"{node.url}/task/{uuid}/info")
    assert info["status"] == {"code": 30} and info["progress"] == 100
    _, body = await get_json(http, f"{node.url}/task/{uuid}/download/all.zip")
    assert body == {"error": "Asset not ready"}


async def test_max_concurrency_and_defaults(
    start_node: StartNode, http: aiohttp.ClientSession
) -> None:
    node = await start_node(max_concurrency=2)
    options = '[{"name": "max-concurrency", "value": 8}, {"name": "unknown", "value": 1}]'
    uuid = await create_task(
        http, node.url, fields={"options": options, "skipPostProcessing": "true"}
    )
    await eventually(lambda: node.tasks[uuid].status == TaskStatus.COMPLETED, message="done")
    assert node.tasks[uuid].options == [{"name": "max-concurrency", "value": 2}]
    _, body = await post_json(http, f"{node.url}/task/new/init", data=fields_form(name=""))
    assert "uuid" in body
