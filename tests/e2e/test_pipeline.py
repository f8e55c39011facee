"""Early forwarding: images reach the node while the client is still uploading."""

from __future__ import annotations

import aiohttp
from aiohttp import FormData

from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually


async def test_images_reach_node_before_commit(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory([sim])
    async with aiohttp.ClientSession() as s:
        init = FormData(default_to_multipart=True)
        init.add_field("name", "early")
        r = await s.post(f"{cluster.url}/task/new/init", data=init)
        uuid = (await r.json())["uuid"]
        for i in range(3):
            f = FormData()
            f.add_field("images", b"z" * 5000, filename=f"p{i}.jpg")
            r = await s.post(f"{cluster.url}/task/new/upload/{uuid}", data=f)
            assert await r.json() == {"success": True}
        # before commit, the node already holds every image
        await eventually(lambda: sim.upload_requests == 3, message="uploads forwarded early")
        assert uuid not in sim.tasks
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        await eventually(lambda: uuid in sim.tasks, message="committed on the node")
    assert sorted(sim.tasks[uuid].images) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert sim.tasks[uuid].name == "early"
    assert sim.upload_requests == 3, "no image is sent twice"


async def test_failed_early_forwarding_falls_back(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    bad = await simnode_factory(drop_uploads_after=1)
    good = await simnode_factory()
    cluster = await cluster_factory([bad, good])
    async with aiohttp.ClientSession() as s:
        f = FormData()
        for i in range(4):
            f.add_field("images", b"q" * 1000, filename=f"q{i}.jpg")
        uuid = (await (await s.post(f"{cluster.url}/task/new", data=f)).json())["uuid"]
        await eventually(lambda: uuid in good.tasks, timeout_s=15, message="sent to the other node")
    assert sorted(good.tasks[uuid].images) == [f"q{i}.jpg" for i in range(4)]
    assert uuid not in bad.tasks
