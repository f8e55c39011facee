"""End to end: pyodm, exactly as WebODM drives a node, through the cluster to simulated nodes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from pathlib import Path

import aiohttp
import pytest
from pyodm import Node
from pyodm.exceptions import NodeResponseError

from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually


def make_images(folder: Path, count: int, size: int = 2048) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = folder / f"IMG_{i:04d}.JPG"
        p.write_bytes(bytes([i % 256]) * size)
        paths.append(str(p))
    return paths


def pyodm_node(url: str, token: str = "") -> Node:
    host, port = url.removeprefix("http://").split(":")
    return Node(host, int(port), token=token, timeout=10)


async def test_task_lifecycle_through_cluster(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    sim = await simnode_factory(test_seconds=0.5)
    cluster = await cluster_factory([sim])
    images = make_images(tmp_path / "imgs", 5)
    node = pyodm_node(cluster.url)

    task = await asyncio.to_thread(
        node.create_task, images, {"orthophoto-resolution": 5}, "field survey"
    )
    # the proxy answers at once; the task lands on the node under the same uuid
    await eventually(lambda: task.uuid in sim.tasks, timeout_s=10, message="task on node")
    assert len(sim.tasks[task.uuid].images) == 5

    await asyncio.to_thread(lambda: task.wait_for_completion(interval=0.1))
    info = await asyncio.to_thread(task.info)
    assert info.status.value == 40
    assert info.name == "field survey"
    assert {"name": "orthophoto-resolution", "value": 5} in [
        {"name": o["name"], "value": o["value"]} for o in info.options
    ]
    out = await asyncio.to_thread(task.output)
    assert out and isinstance(out[0], str)

    dest = tmp_path / "out"
    await asyncio.to_thread(task.download_assets, str(dest))
    assert any(dest.rglob("*.tif"))

    # all.zip bytes through the cluster equal the node's
    async with aiohttp.ClientSession() as s:
        via = await (await s.get(f"{cluster.url}/task/{task.uuid}/download/all.zip")).read()
        direct = await (await s.get(f"{sim.url}/task/{task.uuid}/download/all.zip")).read()
    assert hashlib.sha256(via).digest() == hashlib.sha256(direct).digest()
    assert zipfile.is_zipfile(io.BytesIO(via))

    assert await asyncio.to_thread(task.remove)
    with pytest.raises(NodeResponseError):
        await asyncio.to_thread(task.info)


async def test_cancel_and_restart(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    sim = await simnode_factory(test_seconds=5)
    cluster = await cluster_factory([sim])
    node = pyodm_node(cluster.url)
    task = await asyncio.to_thread(node.create_task, make_images(tmp_path / "i", 2))
    await eventually(lambda: task.uuid in sim.tasks, message="task on node")
    assert await asyncio.to_thread(task.cancel)
    info = await asyncio.to_thread(task.info)
    assert info.status.value == 50
    assert await asyncio.to_thread(task.restart)
    info = await asyncio.to_thread(task.info)
    assert info.status.value in (10, 20)


async def test_tasks_spread_over_nodes(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    a = await simnode_factory(test_seconds=5)
    b = await simnode_factory(test_seconds=5)
    cluster = await cluster_factory([a, b])
    node = pyodm_node(cluster.url)
    imgs = make_images(tmp_path / "i", 2)
    t1 = await asyncio.to_thread(node.create_task, imgs)
    await eventually(lambda: t1.uuid in a.tasks or t1.uuid in b.tasks)
    t2 = await asyncio.to_thread(node.create_task, imgs)
    await eventually(lambda: t2.uuid in a.tasks or t2.uuid in b.tasks)
    assert (t1.uuid in a.tasks) != (t2.uuid in a.tasks), "two tasks should use both nodes"


async def test_big_task_goes_to_node_with_room(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    small = await simnode_factory(max_images=3)
    large = await simnode_factory(max_images=100)
    cluster = await cluster_factory([small, large])
    node = pyodm_node(cluster.url)
    t = await asyncio.to_thread(node.create_task, make_images(tmp_path / "i", 6))
    await eventually(lambda: t.uuid in large.tasks, message="task on the large node")
    assert t.uuid not in small.tasks


async def test_offline_node_gets_no_tasks(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    a = await simnode_factory()
    b = await simnode_factory()
    cluster = await cluster_factory([a, b])
    await b.stop()
    key_b = f"{b.host}:{b.port}"
    await eventually(
        lambda: not cluster.registry.is_online(cluster.registry.get(key_b)),  # type: ignore[arg-type]
        message="node b offline",
    )
    node = pyodm_node(cluster.url)
    for _ in range(2):
        t = await asyncio.to_thread(node.create_task, make_images(tmp_path / "i", 1))
        await eventually(lambda t=t: t.uuid in a.tasks, message="task on node a")


async def test_upload_failure_switches_node(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    bad = await simnode_factory(drop_uploads_after=0)
    good = await simnode_factory()
    cluster = await cluster_factory([bad, good])
    # both idle: the first node added is the first choice, and its uploads fail
    node = pyodm_node(cluster.url)
    t = await asyncio.to_thread(node.create_task, make_images(tmp_path / "i", 3))
    await eventually(lambda: t.uuid in good.tasks, timeout_s=15, message="task on good node")
    assert bad.upload_requests >= 1, "the first choice should have been tried"
    assert t.uuid not in bad.tasks
    info = await asyncio.to_thread(t.info)
    assert info.uuid == t.uuid


async def test_splitmerge_option_gets_sm_cluster(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], public_address="http://cluster.example:3000")
    node = pyodm_node(cluster.url)
    t = await asyncio.to_thread(node.create_task, make_images(tmp_path / "i", 2), {"split": 50})
    await eventually(lambda: t.uuid in sim.tasks)
    opts = {o["name"]: o["value"] for o in sim.tasks[t.uuid].options}
    assert opts["split"] == 50
    assert opts["sm-cluster"] == "http://cluster.example:3000"


async def test_range_and_head_pass_through(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    sim = await simnode_factory(zip_size=5_000_000)
    cluster = await cluster_factory([sim])
    node = pyodm_node(cluster.url)
    task = await asyncio.to_thread(node.create_task, make_images(tmp_path / "i", 1))
    await asyncio.to_thread(lambda: task.wait_for_completion(interval=0.1))
    path = f"/task/{task.uuid}/download/all.zip"
    rng = {"Range": "bytes=1000-1999"}
    async with aiohttp.ClientSession() as s:
        via = await s.get(cluster.url + path, headers=rng)
        direct = await s.get(sim.url + path, headers=rng)
        assert via.status == direct.status == 206
        assert via.headers["Content-Range"] == direct.headers["Content-Range"]
        assert await via.read() == await direct.read()
        head = await s.head(cluster.url + path)
        assert head.status == 200
        assert head.headers["Content-Length"] == "5000000"
        assert head.headers["Accept-Ranges"] == "bytes"
        assert "all.zip" in head.headers["Content-Disposition"]
