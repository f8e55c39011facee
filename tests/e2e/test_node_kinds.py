"""The cluster in front of each kind of node, the simulated one and the real NodeODM (#14).

Every test runs twice through ``node_factory``; what the cluster answers is compared with what the
node itself answers to the same request, so the tests hold for both kinds without knowing their
differences (docs/simnode.md lists those).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import uuid as uuidlib
from pathlib import Path
from typing import Any

import aiohttp
import pyodm
import pytest
from aiohttp import FormData

from clusterodm.config import DispatchSettings
from tests.conftest import ClusterFactory
from tests.helpers import eventually

LARGE_BYTES = 20 * 1024 * 1024
COMPLETED, FAILED, CANCELED = 40, 30, 50
TIMEOUT = aiohttp.ClientTimeout(total=60)


def images_dir(node: Any, uuid: str) -> Path:
    """Where the node keeps a task's images (both kinds keep ``<task>/images``)."""
    if node.kind == "real":
        path: Path = node.task_dir(uuid) / "images"
        return path
    task = node.tasks.get(uuid)
    return Path(task.directory if task else "/nonexistent") / "images"


def held(node: Any, uuid: str) -> dict[str, str]:
    """The node's images of a task: name -> sha256."""
    d = images_dir(node, uuid)
    if not d.is_dir():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def node_query(node: Any) -> dict[str, str]:
    return {"token": node.config.token} if node.config.token else {}


async def get_json(s: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with s.get(url, params=params) as r:
        assert r.status == 200, (url, r.status)
        return await r.json()


async def wait_status(
    s: aiohttp.ClientSession, base: str, uuid: str, codes: tuple[int, ...], **params: str
) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        body: dict[str, Any] = await get_json(s, f"{base}/task/{uuid}/info", **params)
        return body if body.get("status", {}).get("code") in codes else None

    result: dict[str, Any] = await eventually(
        ended, timeout_s=60, interval_s=0.2, message=f"task {uuid} in {codes}"
    )
    return result


async def new_task(
    s: aiohttp.ClientSession, base: str, files: dict[str, bytes], **fields: str
) -> str:
    """A task in one ``/task/new`` request: fields first, then the images."""
    form = FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, data in files.items():
        form.add_field("images", data, filename=name, content_type="image/jpeg")
    async with s.post(f"{base}/task/new", data=form) as r:
        body = await r.json()
    assert "uuid" in body, body
    uuid: str = body["uuid"]
    return uuid


def small_images(n: int, size: int = 4096) -> dict[str, bytes]:
    return {f"img{i}.jpg": bytes([i + 1]) * (size + i) for i in range(n)}


async def sha_of(s: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, str, int]:
    """Status, sha256 and length of a download, read in pieces."""
    digest, size = hashlib.sha256(), 0
    async with s.get(url, params=params) as r:
        async for chunk in r.content.iter_chunked(1 << 16):
            digest.update(chunk)
            size += len(chunk)
        return r.status, digest.hexdigest(), size


async def test_chunked_upload_of_a_large_image_arrives_byte_for_byte(
    node_factory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    large = os.urandom(LARGE_BYTES)
    files = {**small_images(2), "large.jpg": large}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))

    def run() -> str:
        api = pyodm.Node("127.0.0.1", cluster.port)
        task = api.create_task(paths, {"orthophoto-resolution": 5}, name="large")
        task.wait_for_completion(interval=0.2)
        assert task.info().status.name == "COMPLETED"
        return str(task.uuid)

    uuid = await asyncio.wait_for(asyncio.to_thread(run), 120)
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert held(node, uuid) == expected


async def test_single_request_task_downloads_match_the_node(
    node_factory, cluster_factory: ClusterFactory
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    direct = node_query(node)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        files = small_images(3)
        options = json.dumps([{"name": "dsm", "value": True}])
        uuid = await new_task(s, cluster.url, files, name="one request", options=options)
        info = await wait_status(s, cluster.url, uuid, (COMPLETED, FAILED))
        assert info["status"]["code"] == COMPLETED
        assert info["name"] == "one request" and info["imagesCount"] == 3
        assert {"name": "dsm", "value": True} in info["options"]
        assert held(node, uuid) == {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}

        # all.zip: the very bytes the node gives; a single asset: the node's answer (NodeODM
        # 2.2.4 serves all.zip only, and both say so in the same words)
        via = await sha_of(s, f"{cluster.url}/task/{uuid}/download/all.zip")
        own = await sha_of(s, f"{node.url}/task/{uuid}/download/all.zip", **direct)
        assert via == own
        for asset in ("orthophoto.tif", "odm_orthophoto.tif"):
            via_json = await get_json(s, f"{cluster.url}/task/{uuid}/download/{asset}")
            own_json = await get_json(s, f"{node.url}/task/{uuid}/download/{asset}", **direct)
            assert via_json == own_json == {"error": "Invalid asset"}, asset
        status, _, size = await sha_of(s, f"{cluster.url}/task/{uuid}/download/all.zip")
        assert status == 200 and size > 1000

        # HEAD: the headers of the GET, no body
        async with s.head(f"{cluster.url}/task/{uuid}/download/all.zip") as head:
            assert head.status == 200
            assert head.headers["Content-Length"] == str(size)
            assert await head.read() == b""

        # Range: whatever the node does with it (the real one ignores it), the cluster passes on
        for wanted in ("bytes=0-9", "bytes=100-", f"bytes={size + 10}-"):
            url = f"/task/{uuid}/download/all.zip"
            headers = {"Range": wanted}
            async with s.get(cluster.url + url, headers=headers) as via_r:
                via = (via_r.status, via_r.headers.get("Content-Range"), await via_r.read())
            async with s.get(node.url + url, headers=headers, params=direct) as own_r:
                own = (own_r.status, own_r.headers.get("Content-Range"), await own_r.read())
            assert via == own, wanted


async def test_output_lines_and_info_with_output_match_the_node(
    node_factory, cluster_factory: ClusterFactory
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    direct = node_query(node)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        uuid = await new_task(s, cluster.url, small_images(2))
        await wait_status(s, cluster.url, uuid, (COMPLETED,))
        whole = await get_json(s, f"{node.url}/task/{uuid}/output", **direct)
        assert len(whole) > 3
        for line in ("0", "2", str(len(whole) - 1), str(len(whole) + 5), "-2"):
            via = await get_json(s, f"{cluster.url}/task/{uuid}/output", line=line)
            own = await get_json(s, f"{node.url}/task/{uuid}/output", line=line, **direct)
            assert via == own, line
        for start in ("0", "3", "-1"):
            via = await get_json(s, f"{cluster.url}/task/{uuid}/info", with_output=start)
            own = await get_json(s, f"{node.url}/task/{uuid}/info", with_output=start, **direct)
            assert via["output"] == own["output"], start
            assert via["status"] == own["status"]


async def test_cancel_restart_remove(node_factory, cluster_factory: ClusterFactory) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        uuid = await new_task(s, cluster.url, small_images(2))

        async def act(action: str, **extra: str) -> Any:
            async with s.post(f"{cluster.url}/task/{action}", data={"uuid": uuid, **extra}) as r:
                assert r.status == 200
                return await r.json()

        await wait_status(s, cluster.url, uuid, (20, COMPLETED))
        assert await act("cancel") == {"success": True}
        # the real node's test mode lets a cancelled run finish; the simulated one stops it
        await wait_status(s, cluster.url, uuid, (CANCELED, COMPLETED))
        opts = json.dumps([{"name": "orthophoto-resolution", "value": 7}])
        assert await act("restart", options=opts) == {"success": True}

        async def restarted() -> bool:
            info = await get_json(s, f"{cluster.url}/task/{uuid}/info")
            wanted = {"name": "orthophoto-resolution", "value": 7}
            return info["status"]["code"] == COMPLETED and wanted in info["options"]

        await eventually(restarted, timeout_s=30, interval_s=0.2, message="rerun, new options")
        assert await act("remove") == {"success": True}
        gone = await get_json(s, f"{cluster.url}/task/{uuid}/info")
        assert "error" in gone
        own = await get_json(s, f"{node.url}/task/{uuid}/info", **node_query(node))
        assert "error" in own  # removed on the node too
        assert await act("remove") != {"success": True}


async def test_unknown_uuids_get_nodeodm_style_errors(
    node_factory, cluster_factory: ClusterFactory
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    unknown = str(uuidlib.uuid4())
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        for path in ("info", "output", "download/all.zip", "download/orthophoto.tif"):
            async with s.get(f"{cluster.url}/task/{unknown}/{path}") as r:
                assert r.status == 200, path
                body = await r.json()
            assert unknown in body["error"], (path, body)
        for action in ("cancel", "remove", "restart"):
            async with s.post(f"{cluster.url}/task/{action}", data={"uuid": unknown}) as r:
                body = await r.json()
            # the original's words
            assert body == {
                "error": f"Invalid route for taskId {unknown}, no nodes in routing table."
            }
        async with s.post(f"{cluster.url}/task/new/upload/{unknown}") as r:
            assert "error" in await r.json()
        async with s.post(f"{cluster.url}/task/new/commit/{unknown}") as r:
            assert "error" in await r.json()
        async with s.get(f"{cluster.url}/task/not-a-uuid/info") as r:
            assert "error" in await r.json()


async def test_options_are_the_nodes_and_checked_as_it_checks_them(
    node_factory, cluster_factory: ClusterFactory
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        own = await get_json(s, f"{node.url}/options", **node_query(node))
        via = await get_json(s, f"{cluster.url}/options")
        assert via == own
        bad = [
            [{"name": "orthophoto-resolution", "value": "abc"}],
            [{"name": "feature-type", "value": "nope"}],
            [{"name": "mesh-octree-depth", "value": 99}],
        ]
        for options in bad:
            form = {"name": "x", "options": json.dumps(options)}
            async with s.post(
                f"{cluster.url}/task/new/init", data=FormData(form, default_to_multipart=True)
            ) as r:
                via_answer = await r.json()
            async with s.post(
                f"{node.url}/task/new/init",
                data=FormData(form, default_to_multipart=True),
                params=node_query(node),
            ) as r:
                own_answer = await r.json()
            assert "error" in via_answer
            assert via_answer == own_answer, options


async def test_max_images_sends_tasks_to_the_node_that_takes_them(
    node_factory, cluster_factory: ClusterFactory
) -> None:
    small = await node_factory(test_seconds=1, max_images=2)
    large = await node_factory(test_seconds=1, max_images=4)
    cluster = await cluster_factory(nodes=[small, large])
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        info = await get_json(s, f"{cluster.url}/info")
        assert info["maxImages"] is None or info["maxImages"] >= 4
        # the original's figures for a cluster's resources
        assert info["totalMemory"] == info["cpuCores"] == info["maxParallelTasks"] == 99999999999
        uuid = await new_task(s, cluster.url, small_images(3))
        await wait_status(s, cluster.url, uuid, (COMPLETED,))
        assert len(held(large, uuid)) == 3
        assert held(small, uuid) == {}
        two = await new_task(s, cluster.url, small_images(2))
        await wait_status(s, cluster.url, two, (COMPLETED,))
        assert len(held(small, two)) + len(held(large, two)) == 2
        form = FormData()
        for name, data in small_images(5).items():
            form.add_field("images", data, filename=name)
        async with s.post(f"{cluster.url}/task/new", data=form) as r:
            body = await r.json()
        assert body == {"error": "No nodes available"}  # the original's answer


@pytest.mark.parametrize("cluster_token", ["", "users-token"])
async def test_a_node_with_a_token(
    node_factory, cluster_factory: ClusterFactory, cluster_token: str
) -> None:
    node = await node_factory(test_seconds=1, token="node-secret")
    cluster = await cluster_factory(nodes=[node], token=cluster_token)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        async with s.get(f"{node.url}/task/list") as r:
            assert "error" in await r.json()  # the node wants its token
        mine = {"token": cluster_token} if cluster_token else {}
        form = FormData()
        for name, data in small_images(2).items():
            form.add_field("images", data, filename=name)
        async with s.post(f"{cluster.url}/task/new", data=form, params=mine) as r:
            uuid = (await r.json())["uuid"]
        await wait_status(s, cluster.url, uuid, (COMPLETED,), **mine)
        status, digest, _ = await sha_of(s, f"{cluster.url}/task/{uuid}/download/all.zip", **mine)
        own = await sha_of(s, f"{node.url}/task/{uuid}/download/all.zip", token="node-secret")
        assert (status, digest) == own[:2]
        if cluster_token:
            async with s.get(f"{cluster.url}/task/{uuid}/info") as r:
                assert "error" in await r.json()  # the cluster's own token is still asked


async def upload_form(
    s: aiohttp.ClientSession, url: str, files: list[tuple[str, bytes]], **params: str
) -> None:
    """One upload request; the file names go out as they are (quoted, not percent-encoded)."""
    form = FormData(quote_fields=False)
    for name, data in files:
        form.add_field("images", data, filename=name, content_type="image/jpeg")
    async with s.post(url, data=form, params=params) as r:
        assert await r.json() == {"success": True}, name


async def init_upload(s: aiohttp.ClientSession, base: str, **params: str) -> str:
    form = FormData({"name": "d"}, default_to_multipart=True)
    async with s.post(f"{base}/task/new/init", data=form, params=params) as r:
        uuid: str = (await r.json())["uuid"]
    return uuid


@pytest.mark.parametrize("early", [True, False], ids=["early", "staged"])
async def test_duplicate_names_are_all_kept_and_renamed_as_nodeodm_does(
    node_factory, cluster_factory: ClusterFactory, early: bool
) -> None:
    """Same-named images in consecutive uploads, and twice in one: the node holds every one,
    under NodeODM's clash names. With early forwarding the relays send the staged names, so
    the node never meets a clash (it renames one racily: two files could take ``a_.jpg``)."""
    node = await node_factory(test_seconds=1)
    dispatch = DispatchSettings(backoff_base_s=0.05, backoff_max_s=0.2, early_forwarding=early)
    cluster = await cluster_factory(nodes=[node], dispatch=dispatch)
    images = [bytes([i]) * 300_000 for i in range(1, 6)]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        uuid = await init_upload(s, cluster.url)
        url = f"{cluster.url}/task/new/upload/{uuid}"
        for batch in ([images[0]], [images[1]], [images[2], images[3]], [images[4]]):
            await upload_form(s, url, [("a.jpg", data) for data in batch])
        async with s.post(f"{cluster.url}/task/new/commit/{uuid}") as r:
            assert await r.json() == {"uuid": uuid}
        await wait_status(s, cluster.url, uuid, (COMPLETED,))
    kept = held(node, uuid)
    assert sorted(kept) == ["a.jpg", "a_.jpg", "a__.jpg", "a___.jpg", "a____.jpg"]
    assert sorted(kept.values()) == sorted(hashlib.sha256(d).hexdigest() for d in images)


ODD_NAMES = ["x y.jpg", "é.jpg", 'q"x.jpg', "a;b=c.jpg", "50%.jpg", "body.json", "noext"]


@pytest.mark.parametrize("early", [True, False], ids=["early", "staged"])
async def test_names_on_the_node_are_those_a_direct_upload_gives(
    node_factory, cluster_factory: ClusterFactory, early: bool
) -> None:
    """Names the node keeps for uploads sent one after the other, each name twice: through
    the cluster (relayed or sent from staging) the same as when sent to the node directly."""
    node = await node_factory(test_seconds=1)
    dispatch = DispatchSettings(backoff_base_s=0.05, backoff_max_s=0.2, early_forwarding=early)
    cluster = await cluster_factory(nodes=[node], dispatch=dispatch)
    files = [(name, f"{name}{i}".encode() * 1000) for i in range(2) for name in ODD_NAMES]
    mine = node_query(node)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        names = {}
        for base, params in ((cluster.url, {}), (node.url, mine)):  # cluster first: node idle
            uuid = await init_upload(s, base, **params)
            for file in files:
                await upload_form(s, f"{base}/task/new/upload/{uuid}", [file], **params)
            async with s.post(f"{base}/task/new/commit/{uuid}", params=params) as r:
                assert await r.json() == {"uuid": uuid}
            await wait_status(s, base, uuid, (COMPLETED,), **params)
            names[base] = held(node, uuid)
    assert len(names[node.url]) == len(files)
    assert names[cluster.url] == names[node.url]


async def test_concurrent_same_named_uploads_all_reach_the_node(
    node_factory, cluster_factory: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Early forwarding, several uploads of ``a.jpg`` (different bytes) at once, repeated: the
    node holds every image, named ``a.jpg``, ``a_.jpg``..., with its bytes (#14), and got them
    through the relays: the commit's count check never had to send the task afresh."""
    caplog.set_level(logging.WARNING, logger="clusterodm")
    node = await node_factory(test_seconds=1, parallel=3)
    cluster = await cluster_factory(nodes=[node])
    rounds, parallel = 3, 6
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        for round_ in range(rounds):
            images = [os.urandom(400_000) for _ in range(parallel)]
            uuid = await init_upload(s, cluster.url)
            url = f"{cluster.url}/task/new/upload/{uuid}"
            await asyncio.gather(*(upload_form(s, url, [("a.jpg", d)]) for d in images))
            async with s.post(f"{cluster.url}/task/new/commit/{uuid}") as r:
                assert await r.json() == {"uuid": uuid}
            await wait_status(s, cluster.url, uuid, (COMPLETED,))
            kept = held(node, uuid)
            assert sorted(kept) == sorted("a" + "_" * i + ".jpg" for i in range(parallel)), round_
            assert sorted(kept.values()) == sorted(hashlib.sha256(d).hexdigest() for d in images)
    lost = [r.getMessage() for r in caplog.records if "removing it there" in r.getMessage()]
    assert lost == []
