"""A node whose process is gone loses its tasks within a minute, with default settings.

The real NodeODM is stopped while it runs a task; a pyodm client keeps polling the cluster as
WebODM does. Connection refused on two checks some seconds apart means the node is gone, so the
task moves at once (not after ``--failover-grace``) and completes on the other node with the
same images. ``/info`` answers within a second throughout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.admin import TelnetClient
from tests.conftest import ClusterFactory
from tests.e2e.test_proxy_pyodm import make_images, pyodm_node
from tests.faultkit import held
from tests.helpers import eventually
from tests.redis_server import free_port

MOVE_WITHIN_S = 60.0


async def info_is_quick(url: str, stop: asyncio.Event, worst: list[float]) -> None:
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            started = time.monotonic()
            async with s.get(f"{url}/info", timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
            worst.append(time.monotonic() - started)
            await asyncio.sleep(0.2)


async def test_stopped_node_task_moves_within_a_minute(
    node_factory: Callable[..., Awaitable[Any]], cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    doomed = await node_factory(test_seconds=120)
    cluster = await cluster_factory([doomed])  # default failover settings
    client = pyodm_node(cluster.url)
    task = await asyncio.to_thread(client.create_task, make_images(tmp_path / "i", 3))
    key = f"{doomed.host}:{doomed.port}"
    await eventually(
        lambda: (r := cluster.deps.routes.get(task.uuid)) is not None and r.node_key == key,
        timeout_s=20,
        message="task on the doomed node",
    )
    healthy = await node_factory(test_seconds=1)
    added = await cluster.registry.add(healthy.host, healthy.port)
    await cluster.deps.health.refresh(added)

    stop, worst = asyncio.Event(), [0.0]
    watcher = asyncio.ensure_future(info_is_quick(cluster.url, stop, worst))
    try:
        await doomed.stop()
        started = time.monotonic()
        # the client waits as WebODM does
        await asyncio.wait_for(
            asyncio.to_thread(lambda: task.wait_for_completion(interval=0.5)), MOVE_WITHIN_S + 30
        )
        took = time.monotonic() - started
    finally:
        stop.set()
        await watcher
    assert cluster.failover is not None and cluster.failover.moves == 1
    assert took < MOVE_WITHIN_S, f"moved and completed after {took:.0f} s"
    names = held(healthy, task.uuid)
    assert names is not None and sorted(names) == ["IMG_0000.JPG", "IMG_0001.JPG", "IMG_0002.JPG"]
    assert max(worst) < 1.0, f"/info took {max(worst):.2f} s"


async def test_node_del_of_a_busy_node_needs_force_and_never_runs_a_task_twice(
    node_factory: Callable[..., Awaitable[Any]], cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    first = await node_factory(test_seconds=120)
    cluster = await cluster_factory([first], admin_cli_port=free_port())
    client = pyodm_node(cluster.url)
    task = await asyncio.to_thread(client.create_task, make_images(tmp_path / "i", 2))
    await eventually(
        lambda: cluster.deps.routes.get(task.uuid) is not None, timeout_s=20, message="landed"
    )
    second = await node_factory(test_seconds=1)
    added = await cluster.registry.add(second.host, second.port)
    await cluster.deps.health.refresh(added)
    admin, _ = await TelnetClient.connect(cluster.extra["admin-cli"].port)
    try:
        refused = await admin.cmd("NODE DEL 1")
        assert refused[-1] == "FAIL", refused
        assert "NODE LOCK 1" in refused[0] and "--force" in refused[0]
        assert cluster.registry.get(f"{first.host}:{first.port}") is not None
        assert await admin.cmd("NODE DEL 1 --force") == ["OK"]
    finally:
        await admin.close()
    await asyncio.wait_for(asyncio.to_thread(lambda: task.wait_for_completion(interval=0.3)), 60)
    names = held(second, task.uuid)
    assert names is not None and sorted(names) == ["IMG_0000.JPG", "IMG_0001.JPG"]
    assert held(first, task.uuid) is None, "the removed node no longer runs the task"
