"""Early forwarding: images reach the node while the client is still uploading."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from aiohttp import FormData

from clusterodm.config import DispatchSettings
from clusterodm.simnode import SimNode
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
    # every upload to this node fails, so whichever way the images go to it first (relayed while
    # they arrive, or sent from staging) the task must end up on the other node
    bad = await simnode_factory(drop_uploads_after=0)
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


def ready(sim: SimNode, uuid: str) -> bool:
    """The node created the task and moved its images in place."""
    task = sim.tasks.get(uuid)
    return task is not None and task.initialized


def node_image(sim: SimNode, uuid: str, name: str) -> bytes:
    return (sim.tasks[uuid].directory / "images" / name).read_bytes()


async def init_task(s: aiohttp.ClientSession, url: str) -> str:
    r = await s.post(f"{url}/task/new/init", data=FormData(default_to_multipart=True))
    uuid: str = (await r.json())["uuid"]
    return uuid


async def upload(s: aiohttp.ClientSession, url: str, uuid: str, files: dict[str, bytes]) -> Any:
    f = FormData()
    for name, data in files.items():
        f.add_field("images", data, filename=name, content_type="image/jpeg")
    r = await s.post(f"{url}/task/new/upload/{uuid}", data=f)
    return await r.json()


async def test_relay_passes_the_client_bytes_once(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """Each upload request reaches the node as one request, byte for byte, while staged."""
    sim = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory([sim])
    images = {"a.jpg": os.urandom(1000), "b.jpg": os.urandom(5000), "c.jpg": os.urandom(3 << 20)}
    async with aiohttp.ClientSession() as s:
        uuid = await init_task(s, cluster.url)
        assert await upload(s, cluster.url, uuid, {"a.jpg": images["a.jpg"]}) == {"success": True}
        rest = {"b.jpg": images["b.jpg"], "c.jpg": images["c.jpg"]}
        assert await upload(s, cluster.url, uuid, rest) == {"success": True}
        await eventually(lambda: sim.upload_requests == 2, message="both requests relayed")
        staged = cluster.staging.path(uuid)
        assert sorted(p.name for p in staged.iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        await eventually(lambda: ready(sim, uuid), message="initialised on the node")
    assert sim.upload_requests == 2, "no image was sent again after commit"
    for name, data in images.items():
        assert node_image(sim, uuid, name) == data


async def test_same_name_twice_is_relayed_as_the_node_names_it(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """Two uploads named a.jpg: staged as a.jpg and a_.jpg, the rule NodeODM follows too, so
    the relays stand and nothing is sent twice."""
    sim = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory([sim])
    first, second, other = os.urandom(2000), os.urandom(3000), os.urandom(4000)
    async with aiohttp.ClientSession() as s:
        uuid = await init_task(s, cluster.url)
        await upload(s, cluster.url, uuid, {"a.jpg": first})
        await upload(s, cluster.url, uuid, {"a.jpg": second})
        await upload(s, cluster.url, uuid, {"b.jpg": other})
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        await eventually(lambda: ready(sim, uuid), message="initialised on the node")
    assert sim.upload_requests == 3
    assert sorted(sim.tasks[uuid].images) == ["a.jpg", "a_.jpg", "b.jpg"]
    assert node_image(sim, uuid, "a.jpg") == first
    assert node_image(sim, uuid, "a_.jpg") == second
    assert node_image(sim, uuid, "b.jpg") == other


async def test_a_name_the_cluster_changes_is_relayed_as_staged(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """``dir/x.jpg`` is staged as ``dir_x.jpg``; the relay sends the staged name, so the node
    holds the same names as the staging folder (as the ordinary dispatch would give it)."""
    sim = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory([sim])
    plain, odd = os.urandom(2000), os.urandom(3000)
    async with aiohttp.ClientSession() as s:
        uuid = await init_task(s, cluster.url)
        await upload(s, cluster.url, uuid, {"plain.jpg": plain})
        body = (
            b'--b\r\nContent-Disposition: form-data; name="images"; filename="dir/x.jpg"\r\n\r\n'
            + odd
            + b"\r\n--b--\r\n"
        )
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        r = await s.post(f"{cluster.url}/task/new/upload/{uuid}", data=body, headers=headers)
        assert await r.json() == {"success": True}
        # relayed before the commit: both requests reached the node (nothing sent afterwards)
        await eventually(lambda: sim.upload_requests == 2, message="both relayed")
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        await eventually(lambda: ready(sim, uuid), timeout_s=15, message="committed")
    assert sim.upload_requests == 2
    assert sorted(sim.tasks[uuid].images) == ["dir_x.jpg", "plain.jpg"]
    assert node_image(sim, uuid, "dir_x.jpg") == odd
    assert node_image(sim, uuid, "plain.jpg") == plain


async def test_client_leaving_mid_upload_keeps_the_task_whole(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """A client that drops its connection half-way through an image, then sends it again:
    the node ends up with exactly the staged images."""
    sim = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory([sim])
    good, retried = os.urandom(2000), os.urandom(3 << 20)
    async with aiohttp.ClientSession() as s:
        uuid = await init_task(s, cluster.url)
        await upload(s, cluster.url, uuid, {"good.jpg": good})
        port = int(cluster.url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST /task/new/upload/{uuid} HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n"
            "Content-Type: multipart/form-data; boundary=zz\r\n\r\n"
        ).encode()
        part = b'--zz\r\nContent-Disposition: form-data; name="images"; filename="late.jpg"\r\n\r\n'
        writer.write(head + part + retried[: 2 << 20])  # more than one staging write
        await writer.drain()
        await eventually(
            lambda: any(p.name.startswith(".part-") for p in cluster.staging.path(uuid).iterdir()),
            message="the half image is being staged",
        )
        writer.close()
        await eventually(
            lambda: (
                not any(p.name.startswith(".part-") for p in cluster.staging.path(uuid).iterdir())
            ),
            message="the half image is dropped",
        )
        await upload(s, cluster.url, uuid, {"late.jpg": retried})
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        await eventually(lambda: ready(sim, uuid), message="initialised on the node")
    assert sorted(sim.tasks[uuid].images) == ["good.jpg", "late.jpg"]
    assert node_image(sim, uuid, "late.jpg") == retried
    assert node_image(sim, uuid, "good.jpg") == good


async def test_node_failing_a_relay_falls_back_to_another_node(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """The node of a pipeline answers the second relayed request with HTTP 500."""
    bad = await simnode_factory(drop_uploads_after=1)
    good = await simnode_factory()
    cluster = await cluster_factory([bad])
    images = {f"r{i}.jpg": os.urandom(3000) for i in range(4)}
    async with aiohttp.ClientSession() as s:
        uuid = await init_task(s, cluster.url)
        for i, (name, data) in enumerate(images.items()):
            assert await upload(s, cluster.url, uuid, {name: data}) == {"success": True}
            if i == 0:  # the pipeline is open on the bad node: now a good one joins
                added = await cluster.registry.add(good.host, good.port, "")
                await cluster.deps.health.refresh(added)
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        owner = await eventually(
            lambda: next((n for n in (bad, good) if ready(n, uuid)), None),
            timeout_s=15,
            message="the task runs on a node",
        )
    assert sorted(owner.tasks[uuid].images) == sorted(images)
    for name, data in images.items():
        assert node_image(owner, uuid, name) == data


async def test_commit_while_relays_still_run_sends_nothing_twice(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """The node stalls: the client is answered before the node, commits at once, and the
    relays end only afterwards. Every image must reach the node exactly once."""
    sim = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory([sim])
    images = {name: os.urandom(3000) for name in ("a.jpg", "b.jpg", "c.jpg")}
    async with aiohttp.ClientSession() as s:
        uuid = await init_task(s, cluster.url)
        assert await upload(s, cluster.url, uuid, {"a.jpg": images["a.jpg"]}) == {"success": True}
        sim.config.hang = True
        for name in ("b.jpg", "c.jpg"):
            assert await upload(s, cluster.url, uuid, {name: images[name]}) == {"success": True}
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        sim.config.hang = False
        await eventually(lambda: ready(sim, uuid), message="initialised on the node")
    assert sorted(sim.tasks[uuid].images) == sorted(images)
    assert sim.upload_requests == 3
    for name, data in images.items():
        assert node_image(sim, uuid, name) == data


async def test_without_early_forwarding_images_wait_for_commit(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """``--no-early-forwarding``: the original's way, staged first, sent after commit."""
    sim = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory(
        [sim], dispatch=DispatchSettings(backoff_base_s=0.05, early_forwarding=False)
    )
    images = {"a.jpg": os.urandom(2000), "b.jpg": os.urandom(2000)}
    async with aiohttp.ClientSession() as s:
        uuid = await init_task(s, cluster.url)
        for name, data in images.items():
            assert await upload(s, cluster.url, uuid, {name: data}) == {"success": True}
        assert sim.upload_requests == 0, "nothing reaches the node before commit"
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        await eventually(lambda: ready(sim, uuid), message="initialised on the node")
    for name, data in images.items():
        assert node_image(sim, uuid, name) == data


async def test_the_commit_of_an_early_forwarded_task_is_answered_once_it_runs(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """The commit's answer waits for the node to start the task (briefly), so a client polling
    at once sees it running; the node was initialised once, its fields being unchanged."""
    sim = await simnode_factory(test_seconds=5)
    cluster = await cluster_factory([sim])
    images = {f"s{i}.jpg": os.urandom(4000) for i in range(3)}
    async with aiohttp.ClientSession() as s:
        init = FormData(default_to_multipart=True)
        init.add_field("name", "settled")
        init.add_field("options", '[{"name": "dsm", "value": true}]')
        r = await s.post(f"{cluster.url}/task/new/init", data=init)
        uuid = (await r.json())["uuid"]
        for name, data in images.items():
            assert await upload(s, cluster.url, uuid, {name: data}) == {"success": True}
        r = await s.post(f"{cluster.url}/task/new/commit/{uuid}")
        assert await r.json() == {"uuid": uuid}
        assert ready(sim, uuid), "the task runs on the node when the commit is answered"
        info = await (await s.get(f"{cluster.url}/task/{uuid}/info")).json()
    assert info["status"]["code"] == 20
    assert sorted(sim.tasks[uuid].images) == sorted(images)
    assert sim.requests["/task/new/init"] == 1, "initialised once: the fields did not change"
    assert {"name": "dsm", "value": True} in sim.tasks[uuid].options
