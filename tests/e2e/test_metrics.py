"""``/metrics`` is scraped after real traffic and its numbers match what the test did."""

from __future__ import annotations

import re

import aiohttp
from aiohttp import FormData

from clusterodm.admin import AdminCommands, build_admin_app
from clusterodm.config import DispatchSettings
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually


def value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)"
    m = re.search(pattern, text)
    assert m, f"{name}{{{labels}}} missing from /metrics"
    return float(m.group(1))


async def test_metrics_match_traffic(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    a = await simnode_factory(test_seconds=30, parallel=1)
    b = await simnode_factory()
    cluster = await cluster_factory(
        [a, b],
        dispatch=DispatchSettings(queue_poll_s=0.1, backoff_base_s=0.05),
    )
    await cluster.registry.set_locked(f"{b.host}:{b.port}", True)
    web_app = build_admin_app(AdminCommands(cluster.deps), "s3cret", cluster.metrics)
    admin = (await cluster.add_site("admin-web", web_app, 0)).port
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            assert (await s.get(f"{cluster.url}/info")).status == 200
        form = FormData()
        for i in range(2):
            form.add_field("images", b"x" * 1000, filename=f"{i}.jpg")
        first = (await (await s.post(f"{cluster.url}/task/new", data=form)).json())["uuid"]
        await eventually(lambda: first in a.tasks)
        form = FormData()
        form.add_field("images", b"y" * 1000, filename="z.jpg")
        await s.post(f"{cluster.url}/task/new", data=form)
        await eventually(lambda: cluster.deps.dispatcher.queue_length() == 1)

        r = await s.get(f"http://127.0.0.1:{admin}/metrics")
        assert r.status == 401, "metrics sit behind the admin password"
        r = await s.get(
            f"http://127.0.0.1:{admin}/metrics",
            headers={"Authorization": aiohttp.encode_basic_auth("admin", "s3cret")},
        )
        text = await r.text()
    assert value(text, "clusterodm_requests_total", 'route="/info",status="200"') == 3
    assert value(text, "clusterodm_requests_total", 'route="/task/new",status="200"') == 2
    assert value(text, "clusterodm_nodes") == 2
    assert value(text, "clusterodm_nodes_online") == 2
    assert value(text, "clusterodm_queue_length") == 1
    assert value(text, "clusterodm_queue_images") == 1  # the waiting task's one image
    assert value(text, "clusterodm_nodes_discovered") == 0
    assert value(text, "clusterodm_dispatches_total") == 1
    assert value(text, "clusterodm_slots_available") == 0  # a is busy, b is locked
    assert value(text, "clusterodm_bytes_received_total") > 3000
    assert value(text, "clusterodm_dispatch_seconds_count") == 1
