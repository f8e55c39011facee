"""A node frozen while a relayed upload is in flight, then resumed: exactly the images sent.

Early forwarding relays each upload to the node as it arrives. The node is frozen (the real
NodeODM with SIGSTOP, the simulated node with ``hang``) while one relay is under way, for
longer than the cluster waits for it, so the relay fails while the node may still take it in
once it runs again. The task must still run with exactly the client's images, no copy of the
late relay beside them. ``/info`` answers within a second while the node is frozen.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData

from clusterodm.config import DispatchSettings, FailoverSettings, Timeouts
from tests.conftest import ClusterFactory
from tests.e2e.test_faults_polls import freeze, thaw
from tests.faultkit import held, staged_dir
from tests.helpers import eventually

IMAGES = {f"p{i}.jpg": bytes([i]) * (20_000 + i) for i in range(3)}


async def upload(s: aiohttp.ClientSession, url: str, uuid: str, name: str) -> None:
    form = FormData()
    form.add_field("images", IMAGES[name], filename=name, content_type="image/jpeg")
    r = await s.post(f"{url}/task/new/upload/{uuid}", data=form)
    assert await r.json() == {"success": True}


async def test_frozen_node_during_a_relay_keeps_exactly_the_images(
    node_factory: Callable[..., Awaitable[Any]], cluster_factory: ClusterFactory
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(
        [node],
        timeouts=Timeouts(stream_read_s=2.0, api_s=2.0, poll_s=1.0),
        dispatch=DispatchSettings(backoff_base_s=0.2, backoff_max_s=1.0, attempts=30),
    )
    url = cluster.url
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/task/new/init", data=FormData({"name": "frozen"}))
        uuid = (await r.json())["uuid"]
        await upload(s, url, uuid, "p0.jpg")  # opens the pipeline: relayed to the node
        assert cluster.deps.intake.pipelines is not None
        assert uuid in cluster.deps.intake.pipelines, "early forwarding is on for this task"
        freeze(node)
        try:
            await upload(s, url, uuid, "p1.jpg")  # its relay waits on the frozen node
            r = await s.post(f"{url}/task/new/commit/{uuid}")
            assert await r.json() == {"uuid": uuid}
            for _ in range(3):
                started = time.monotonic()
                await (await s.get(f"{url}/info")).read()
                assert time.monotonic() - started < 1.0
            # longer than the relay's idle limit: the relay has failed meanwhile
            await eventually(
                lambda: (
                    cluster.deps.table.get(uuid) is not None
                    and cluster.deps.table.get(uuid).attempts >= 2
                ),  # type: ignore[union-attr]
                timeout_s=30,
                message="the commit's first attempt failed on the frozen node",
            )
        finally:
            thaw(node)
        await completes(s, url, uuid)

    expected = {n: hashlib.sha256(b).hexdigest() for n, b in IMAGES.items() if n != "p2.jpg"}
    # p2.jpg was never sent: it only proves the node holds nothing but what the client sent
    assert held(node, uuid) == expected
    assert not staged_dir(node, uuid).exists()


async def completes(s: aiohttp.ClientSession, url: str, uuid: str) -> None:
    async def completed() -> bool:
        body = await (await s.get(f"{url}/task/{uuid}/info")).json()
        return bool(body.get("status", {}).get("code") == 40)

    await eventually(completed, timeout_s=60, message="task completed after the node resumed")


async def test_node_out_of_reach_during_an_attempt_is_cleared_once_back(
    simnode_factory: Any, cluster_factory: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The attempt on a node whose uploads are answered too late fails, and the task goes to
    another node; the first node kept part of the upload and is cleared once it answers again:
    it holds nothing of a task it does not run."""
    slow = await simnode_factory(test_seconds=0.2)
    cluster = await cluster_factory(
        [slow],
        timeouts=Timeouts(api_s=1.0, stream_read_s=1.0, poll_s=1.0),
        dispatch=DispatchSettings(backoff_base_s=0.05, backoff_max_s=0.2, early_forwarding=False),
        failover=FailoverSettings(check_s=0.2),
    )
    url, key = cluster.url, f"{slow.host}:{slow.port}"
    caplog.set_level(logging.INFO, logger="clusterodm.tasks.nodeside")
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/task/new/init", data=FormData({"name": "moves"}))
        uuid = (await r.json())["uuid"]
        await upload(s, url, uuid, "p0.jpg")
        await upload(s, url, uuid, "p1.jpg")
        slow.config.hang_uploads = True  # keeps what it is sent, answers too late
        try:
            r = await s.post(f"{url}/task/new/commit/{uuid}")
            assert await r.json() == {"uuid": uuid}
            await eventually(
                lambda: (t := cluster.deps.table.get(uuid)) is not None and t.node_key == key,
                message="the first attempt goes to the hanging node",
            )
            other = await simnode_factory(test_seconds=0.2)
            added = await cluster.registry.add(other.host, other.port)
            await cluster.deps.health.refresh(added)
            await completes(s, url, uuid)
        finally:
            slow.config.hang_uploads = False
    expected = {n: hashlib.sha256(IMAGES[n]).hexdigest() for n in ("p0.jpg", "p1.jpg")}
    assert held(other, uuid) == expected
    await eventually(
        lambda: not staged_dir(slow, uuid).exists() and held(slow, uuid) is None,
        timeout_s=15,
        message="the node that does not run the task holds nothing of it",
    )
    assert f"removed what {key} held" in caplog.text, "it did hold part of the upload"
