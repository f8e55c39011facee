"""No task turned away, no task lost: the proxy's queue and failover, end to end."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData

from clusterodm.config import DispatchSettings, FailoverSettings
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.e2e.test_crash import write_nodes_json
from tests.e2e.test_proxy_pyodm import make_images, pyodm_node
from tests.helpers import eventually
from tests.proxyproc import ProxyProcess

FAST = {
    "dispatch": DispatchSettings(backoff_base_s=0.05, backoff_max_s=0.2, queue_poll_s=0.1),
    "failover": FailoverSettings(grace_s=0.5, check_s=0.1, max_moves=3),
}


def images_form(count: int) -> FormData:
    f = FormData()
    f.add_field("name", "q")
    for i in range(count):
        f.add_field("images", b"x" * 512, filename=f"i{i}.jpg")
    return f


async def new_task(s: aiohttp.ClientSession, url: str, images: int = 1) -> str:
    body = await (await s.post(f"{url}/task/new", data=images_form(images))).json()
    assert "uuid" in body, body
    return str(body["uuid"])


async def info(s: aiohttp.ClientSession, url: str, uuid: str) -> dict[str, Any]:
    return dict(await (await s.get(f"{url}/task/{uuid}/info?with_output=0")).json())


async def test_full_cluster_queues_then_runs_in_order(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=2, parallel=1)
    cluster = await cluster_factory([sim], **FAST)
    async with aiohttp.ClientSession() as s:
        uuids = [await new_task(s, cluster.url) for _ in range(3)]
        await eventually(lambda: uuids[0] in sim.tasks, message="first on the node")

        async def queued_with_positions() -> bool:
            a, b = await info(s, cluster.url, uuids[1]), await info(s, cluster.url, uuids[2])
            return (
                a["status"]["code"] == 10
                and b["status"]["code"] == 10
                and any("position 1 of 2" in line for line in a["output"])
                and any("position 2 of 2" in line for line in b["output"])
            )

        await eventually(queued_with_positions, message="two tasks queued at the proxy")
        assert uuids[1] not in sim.tasks, "a full node gets no more tasks"

        async def all_done() -> bool:
            codes = [(await info(s, cluster.url, u))["status"]["code"] for u in uuids]
            return codes == [40, 40, 40]

        await eventually(all_done, timeout_s=30, message="all three completed")
        started = [sim.tasks[u].date_created for u in uuids]
        assert started == sorted(started), "dispatched in arrival order"


async def test_max_queue_refuses_with_clear_error(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=5, parallel=1)
    cluster = await cluster_factory([sim], max_queue=1, **FAST)
    async with aiohttp.ClientSession() as s:
        first = await new_task(s, cluster.url)
        await eventually(lambda: first in sim.tasks)
        await new_task(s, cluster.url)
        await eventually(lambda: cluster.deps.dispatcher.queue_length() == 1)
        body = await (await s.post(f"{cluster.url}/task/new", data=images_form(1))).json()
        assert "queue is full" in body["error"]


async def test_cancel_and_remove_queued_task(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=5, parallel=1)
    cluster = await cluster_factory([sim], **FAST)
    async with aiohttp.ClientSession() as s:
        first = await new_task(s, cluster.url)
        await eventually(lambda: first in sim.tasks)
        waiting = await new_task(s, cluster.url)
        await eventually(lambda: cluster.deps.dispatcher.queue_length() == 1)
        r = await s.post(f"{cluster.url}/task/cancel", data={"uuid": waiting})
        assert await r.json() == {"success": True}
        assert (await info(s, cluster.url, waiting))["status"]["code"] == 50
        assert cluster.deps.dispatcher.queue_length() == 0
        r = await s.post(f"{cluster.url}/task/remove", data={"uuid": waiting})
        assert await r.json() == {"success": True}
        assert "error" in await info(s, cluster.url, waiting)


class SimnodeProcess:
    """A simulated node in its own process, so it can be killed with SIGKILL."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.host, self.port = "127.0.0.1", 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clusterodm.simnode",
            "--port=0",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await self.proc.stdout.readline()).decode()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        assert m, line
        self.host, self.port = m.group(1), int(m.group(2))

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


@pytest.fixture
async def killable() -> AsyncIterator[list[SimnodeProcess]]:
    made: list[SimnodeProcess] = []
    yield made
    for p in made:
        await p.kill()


async def test_killed_node_task_finishes_elsewhere(
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    killable: list[SimnodeProcess],
    tmp_path: Path,
) -> None:
    doomed = SimnodeProcess("--test_seconds", "30")
    killable.append(doomed)
    await doomed.start()
    cluster = await cluster_factory([], **FAST)
    await cluster.registry.add(doomed.host, doomed.port)
    await cluster.deps.health.refresh_all()
    node = pyodm_node(cluster.url)
    task = await asyncio.to_thread(node.create_task, make_images(tmp_path / "i", 3))
    key = f"{doomed.host}:{doomed.port}"
    await eventually(
        lambda: (r := cluster.deps.routes.get(task.uuid)) is not None and r.node_key == key,
        message="task on the doomed node",
    )
    healthy = await simnode_factory(test_seconds=0.3)
    await cluster.registry.add(healthy.host, healthy.port)
    await doomed.kill()

    # the client waits as WebODM does and never sees more than a restart of progress
    await asyncio.to_thread(lambda: task.wait_for_completion(interval=0.1))
    assert task.uuid in healthy.tasks
    assert sorted(healthy.tasks[task.uuid].images) == [
        "IMG_0000.JPG",
        "IMG_0001.JPG",
        "IMG_0002.JPG",
    ]
    assert cluster.failover is not None and cluster.failover.moves == 1
    output = await asyncio.to_thread(task.output)
    assert isinstance(output, list)


async def test_node_removed_by_admin_moves_its_tasks(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    first = await simnode_factory(test_seconds=30)
    cluster = await cluster_factory([first], **FAST)
    async with aiohttp.ClientSession() as s:
        uuid = await new_task(s, cluster.url, images=2)
        await eventually(lambda: uuid in first.tasks)
        second = await simnode_factory(test_seconds=0.3)
        await cluster.registry.add(second.host, second.port)
        await cluster.registry.remove(f"{first.host}:{first.port}")
        cluster.deps.routes.forget_node(f"{first.host}:{first.port}")
        await eventually(lambda: uuid in second.tasks, timeout_s=10, message="moved")

        async def completed() -> bool:
            return (await info(s, cluster.url, uuid))["status"]["code"] == 40

        await eventually(completed, timeout_s=10)


async def test_node_that_forgets_task_gets_it_again(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    a = await simnode_factory(test_seconds=30)
    cluster = await cluster_factory([a], **FAST)
    async with aiohttp.ClientSession() as s:
        uuid = await new_task(s, cluster.url)
        await eventually(lambda: uuid in a.tasks)
        b = await simnode_factory(test_seconds=0.3)
        await cluster.registry.add(b.host, b.port)
        await cluster.deps.health.refresh_all()
        # the node restarts and forgets (as NodeODM does for tasks newer than its last dump)
        r = await s.post(f"{a.url}/task/remove", data={"uuid": uuid})
        assert (await r.json())["success"] is True
        await eventually(lambda: uuid in b.tasks, timeout_s=10, message="sent again")


async def test_finished_task_releases_its_images(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory([sim], **FAST)
    async with aiohttp.ClientSession() as s:
        uuid = await new_task(s, cluster.url)
        await eventually(lambda: cluster.staging.exists(uuid), message="images kept")
        await eventually(lambda: not cluster.staging.exists(uuid), message="images released")
        assert cluster.deps.table.get(uuid) is None
        assert (await info(s, cluster.url, uuid))["status"]["code"] == 40


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    p = ProxyProcess(tmp_path / "data")
    yield p
    await p.kill()


async def test_restart_with_a_queue_loses_nothing(
    proxy: ProxyProcess, simnode_factory: SimnodeFactory
) -> None:
    sim = await simnode_factory(test_seconds=1.0, parallel=1)
    write_nodes_json(proxy.data_dir, sim)
    url = await proxy.start()
    async with aiohttp.ClientSession() as s:
        uuids = [await new_task(s, url) for _ in range(3)]
        await eventually(lambda: uuids[0] in sim.tasks)

        async def queued() -> bool:
            return (await info(s, url, uuids[2]))["status"]["code"] == 10

        await eventually(queued, message="third task queued")
        await proxy.kill()
        url = await proxy.start()

        async def all_done() -> bool:
            codes = [(await info(s, url, u)).get("status", {}).get("code") for u in uuids]
            return codes == [40, 40, 40]

        await eventually(all_done, timeout_s=40, message="every task completed after restart")


async def test_two_users_share_the_queue_fairly(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    users = tmp_path / "users.toml"
    users.write_text(
        '[[user]]\nname = "alice"\ntoken = "alice-token-123456"\n'
        '[[user]]\nname = "bob"\ntoken = "bob-token-123456"\n'
    )
    sim = await simnode_factory(test_seconds=1.5, parallel=1)
    cluster = await cluster_factory([sim], users_file=str(users), **FAST)
    async with aiohttp.ClientSession() as s:

        async def submit(token: str) -> str:
            r = await s.post(
                f"{cluster.url}/task/new", data=images_form(1), params={"token": token}
            )
            return str((await r.json())["uuid"])

        alice = [await submit("alice-token-123456") for _ in range(4)]
        bob = await submit("bob-token-123456")
        await eventually(lambda: all(u in sim.tasks for u in [*alice, bob]), timeout_s=40)
    order = sorted([*alice, bob], key=lambda u: sim.tasks[u].date_created)
    # alice's first was already running; bob's one task comes next, not after all of alice's
    assert order.index(bob) <= 2, order
