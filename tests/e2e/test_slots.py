"""Slot accounting as clients see it: a free node is never reported busy, an abandoned upload
never holds a node, and whole-task refusals reach pyodm at once (#20)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyodm
import pytest
from aiohttp import FormData

from clusterodm.config import DispatchSettings
from clusterodm.simnode import SimNode
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually

NO_REFRESH = 3600.0  # the periodic /info round never runs during these tests
QUEUED, RUNNING, COMPLETED = 10, 20, 40


def files(*names: str, size: int = 2000) -> FormData:
    f = FormData()
    for i, name in enumerate(names):
        f.add_field("images", bytes([i % 251]) * size, filename=name, content_type="image/jpeg")
    return f


async def json_of(r: aiohttp.ClientResponse) -> Any:
    return await r.json(content_type=None)


async def status(s: aiohttp.ClientSession, url: str, uuid: str) -> int:
    r = await s.get(f"{url}/task/{uuid}/info")
    code: int = (await json_of(r))["status"]["code"]
    return code


async def submit(s: aiohttp.ClientSession, url: str, name: str) -> str:
    r = await s.post(f"{url}/task/new", data=files(f"{name}.jpg"))
    body = await json_of(r)
    assert "uuid" in body, body
    return str(body["uuid"])


async def test_a_slot_freed_through_the_cluster_is_free_at_once(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=0.2, parallel=1)
    cluster = await cluster_factory([sim], refresh_interval_s=NO_REFRESH)
    node = cluster.registry.nodes()[0]
    async with aiohttp.ClientSession() as s:
        for round_ in range(3):  # finished then removed, as ODM's split-merge does
            uuid = await submit(s, cluster.url, f"r{round_}")
            assert await status(s, cluster.url, uuid) == RUNNING, "never QUEUED on a free node"
            await eventually(lambda u=uuid: u in sim.tasks, message="on the node")
            await eventually(lambda: cluster.registry.slots(node) == 0, message="counted")
            await eventually(
                lambda u=uuid: _is(status(s, cluster.url, u), COMPLETED), message="done"
            )
            assert cluster.registry.slots(node) == 1, "seen finished: the slot is free"
            r = await s.post(f"{cluster.url}/task/remove", data={"uuid": uuid})
            assert (await json_of(r)) == {"success": True}
            assert cluster.registry.slots(node) == 1, "removed: not taken off twice"
        # cancelled through the cluster while it runs: free at once as well
        sim.config.test_seconds = 30
        uuid = await submit(s, cluster.url, "long")
        await eventually(lambda: cluster.registry.slots(node) == 0, message="counted")
        assert await status(s, cluster.url, uuid) == RUNNING
        r = await s.post(f"{cluster.url}/task/cancel", data={"uuid": uuid})
        assert (await json_of(r)) == {"success": True}
        assert cluster.registry.slots(node) == 1


async def test_a_full_count_is_checked_with_the_nodes_before_a_task_queues(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=0.3, parallel=1)
    cluster = await cluster_factory([sim], refresh_interval_s=NO_REFRESH)
    async with aiohttp.ClientSession() as s:
        # a task the cluster never saw fills the node while the cluster counts it
        r = await s.post(f"{sim.url}/task/new", data=files("direct.jpg"))
        direct = (await json_of(r))["uuid"]
        await cluster.deps.health.refresh_all()
        assert cluster.registry.slots(cluster.registry.nodes()[0]) == 0
        await eventually(lambda: _is(status(s, sim.url, direct), COMPLETED), message="direct")
        # the cluster's count still says full; the dispatch asks the node instead of queueing
        uuid = await submit(s, cluster.url, "after")
        r = await s.get(f"{cluster.url}/task/{uuid}/info", params={"with_output": "0"})
        info = await json_of(r)
        assert info["status"]["code"] == RUNNING
        assert not any("Queued" in line for line in info["output"])
        await eventually(lambda: uuid in sim.tasks, message="sent to the node")
    metrics = cluster.deps.dispatcher.metrics
    assert metrics is not None
    samples = metrics.queue_wait_seconds.collect()[0].samples
    waits = [m.value for m in samples if m.name.endswith("_count")]
    assert waits == [0.0], "it never waited in the queue"


async def test_a_quiet_upload_gives_its_slot_back_and_takes_it_again(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=0.2, parallel=1)
    cluster = await cluster_factory(
        [sim],
        refresh_interval_s=NO_REFRESH,
        dispatch=DispatchSettings(
            backoff_base_s=0.05, backoff_max_s=0.2, early_forwarding_idle_s=0.3
        ),
    )
    node = cluster.registry.nodes()[0]
    async with aiohttp.ClientSession() as s:
        # an upload that goes quiet: its pipeline took the node's only slot
        r = await s.post(f"{cluster.url}/task/new/init", data=FormData(default_to_multipart=True))
        quiet = (await json_of(r))["uuid"]
        r = await s.post(f"{cluster.url}/task/new/upload/{quiet}", data=files("q0.jpg"))
        assert await json_of(r) == {"success": True}
        assert cluster.registry.slots(node) == 0
        # a ready task does not wait behind it for longer than the quiet time
        started = time.monotonic()
        ready = await submit(s, cluster.url, "ready")
        await eventually(lambda: ready in sim.tasks, timeout_s=10, message="ready task sent")
        assert time.monotonic() - started < 5
        await eventually(lambda: _is(status(s, cluster.url, ready), COMPLETED), message="done")
        # the quiet upload resumes: the free slot is its own again, its images on the same node
        r = await s.post(f"{cluster.url}/task/new/upload/{quiet}", data=files("q1.jpg"))
        assert await json_of(r) == {"success": True}
        assert cluster.registry.slots(node) == 0
        r = await s.post(f"{cluster.url}/task/new/commit/{quiet}")
        assert await json_of(r) == {"uuid": quiet}
        await eventually(lambda: _ready(sim, quiet), message="the resumed upload committed")
    assert sorted(sim.tasks[quiet].images) == ["q0.jpg", "q1.jpg"]


async def test_an_upload_resumed_after_its_slot_went_elsewhere_is_sent_after_commit(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=30, parallel=1)
    cluster = await cluster_factory(
        [sim],
        refresh_interval_s=NO_REFRESH,
        dispatch=DispatchSettings(
            backoff_base_s=0.05, backoff_max_s=0.2, early_forwarding_idle_s=0.3
        ),
    )
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{cluster.url}/task/new/init", data=FormData(default_to_multipart=True))
        quiet = (await json_of(r))["uuid"]
        await s.post(f"{cluster.url}/task/new/upload/{quiet}", data=files("q0.jpg"))
        busy = await submit(s, cluster.url, "busy")  # takes the slot once the upload is quiet
        await eventually(lambda: busy in sim.tasks, timeout_s=10, message="ready task sent")
        r = await s.post(f"{cluster.url}/task/new/upload/{quiet}", data=files("q1.jpg"))
        assert await json_of(r) == {"success": True}  # staged; the node is busy
        r = await s.post(f"{cluster.url}/task/new/commit/{quiet}")
        assert await json_of(r) == {"uuid": quiet}
        # forwarded from the table as RUNNING, then QUEUED: now no node can take it
        await eventually(lambda: _is(status(s, cluster.url, quiet), QUEUED), message="queued")
        await s.post(f"{cluster.url}/task/cancel", data={"uuid": busy})
        await eventually(lambda: _ready(sim, quiet), message="sent once the slot is free")
    assert sorted(sim.tasks[quiet].images) == ["q0.jpg", "q1.jpg"]


def _ready(sim: SimNode, uuid: str) -> bool:
    task = sim.tasks.get(uuid)
    return task is not None and task.initialized


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


# --- whole-task refusals ---------------------------------------------------------------


def _image_files(tmp_path: Path, names: list[str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        p = tmp_path / name
        p.write_bytes(bytes([i]) * 3000)
        out.append(str(p))
    return out


async def test_seed_zip_without_splitmerge_is_refused_at_commit_at_once(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], no_splitmerge=True)
    paths = _image_files(tmp_path, ["a.jpg", "b.jpg", "seed.zip"])

    def create() -> tuple[float, str]:
        started = time.monotonic()
        with pytest.raises(pyodm.exceptions.NodeResponseError) as refused:
            pyodm.Node("127.0.0.1", cluster.port).create_task(paths, {})
        return time.monotonic() - started, str(refused.value)

    took, message = await asyncio.wait_for(asyncio.to_thread(create), 30)
    assert message == "Cannot use this node as a split-merge cluster."
    assert took < 3, "no upload retries before the client hears it"
    assert sim.tasks == {}
    assert cluster.deps.table.entries() == []


async def test_too_many_images_are_refused_at_commit_at_once(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[[user]]\nname = "bob"\ntoken = "bob-token-1234"\nmax_images = 2\n')
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], users_file=str(users))
    paths = _image_files(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])

    def create() -> tuple[float, str]:
        started = time.monotonic()
        with pytest.raises(pyodm.exceptions.NodeResponseError) as refused:
            api = pyodm.Node("127.0.0.1", cluster.port, token="bob-token-1234")
            api.create_task(paths, {}, parallel_uploads=1)
        return time.monotonic() - started, str(refused.value)

    took, message = await asyncio.wait_for(asyncio.to_thread(create), 60)
    assert message == "You can only upload up to 2 images."
    assert took < 3, "no upload retries before the client hears it"
    assert sim.tasks == {}
