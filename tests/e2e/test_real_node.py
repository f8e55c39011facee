"""A task through the cluster to each kind of node: the simulated one and the real NodeODM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyodm

from tests.conftest import ClusterFactory


async def test_pyodm_task_completes_on_each_kind_of_node(
    node_factory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    images = []
    for i in range(3):
        p = tmp_path / f"img{i}.jpg"
        p.write_bytes(bytes([i]) * (10_000 + i))
        images.append(str(p))

    def run() -> list[str]:
        api = pyodm.Node("127.0.0.1", cluster.port)
        task = api.create_task(images, {"orthophoto-resolution": 5})
        task.wait_for_completion(interval=0.2)
        return [task.uuid, task.info().status.name]

    uuid, status = await asyncio.wait_for(asyncio.to_thread(run), 60)
    assert status == "COMPLETED"
    if node.kind == "real":
        assert node.images(uuid) == ["img0.jpg", "img1.jpg", "img2.jpg"]
