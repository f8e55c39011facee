"""One node's health check never touches another's (#14 defect 4, #16 defect 2).

A node whose host cannot make a URL (put in the store behind validation's back, as data from an
older version or a hand-edited store could) used to make its refresh raise, the TaskGroup of the
health round cancelled every other node's refresh, and after the online window every node was
offline and new tasks were refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from clusterodm.model import Node
from tests.conftest import ClusterFactory
from tests.helpers import eventually

BAD_HOSTS = ["a\\b", "[::1", "]", "a\u0085b", "127.0.0.1:1", "["]


async def _run_task(url: str) -> str:
    """A two-image task through the proxy, polled to completion; its uuid."""
    form = aiohttp.FormData()
    for i in range(2):
        form.add_field("images", b"\xff\xd8\xff\xe0" + b"\0" * 100, filename=f"i{i}.jpg")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/task/new", data=form) as r:
            body = await r.json()
        assert "uuid" in body, body
        uuid = str(body["uuid"])

        async def completed() -> bool:
            async with s.get(f"{url}/task/{uuid}/info") as r:
                info = await r.json()
            code = info.get("status", {}).get("code")
            assert code in (10, 20, 40), info
            return bool(code == 40)

        await eventually(completed, timeout_s=60, interval_s=0.2, message="task completed")
    return uuid


async def test_a_bad_node_in_the_store_leaves_the_good_one_online(
    node_factory: Callable[..., Awaitable[Any]],
    cluster_factory: ClusterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = await node_factory(test_seconds=1)
    # a short online window: a good node whose refreshes stopped would be offline within 1.5 s
    cluster = await cluster_factory([good], online_window_s=1.5, refresh_interval_s=0.2)
    reg = cluster.registry
    for host in BAD_HOSTS:
        await reg._store.put_node(Node(hostname=host, port=3000))
    await reg.load()
    assert len(reg.nodes()) == 1 + len(BAD_HOSTS)
    good_key = f"{good.host}:{good.port}"

    with caplog.at_level(logging.DEBUG, logger="clusterodm"):
        before = reg.get(good_key).last_refreshed_ms  # type: ignore[union-attr]
        await cluster.deps.health.refresh_all()  # completes: nothing escapes one node's check
        await eventually(
            lambda: reg.get(good_key).last_refreshed_ms > before + 1600,  # type: ignore[union-attr]
            timeout_s=10,
            message="the good node is still refreshed, beyond its online window",
        )
        assert [n.key for n in reg.online_nodes()] == [good_key]
        uuid = await _run_task(cluster.url)
    assert cluster.deps.routes.get(uuid).node_key == good_key  # type: ignore[union-attr]
    assert "Traceback" not in caplog.text
    failures = [r for r in caplog.records if r.getMessage().startswith("refresh of ")]
    assert failures and all("\n" not in r.getMessage() for r in failures)
    assert {r.getMessage().split()[2] for r in failures} == {repr(f"{h}:3000") for h in BAD_HOSTS}
    warned = [r for r in failures if r.levelno == logging.WARNING]
    assert len(warned) == len(BAD_HOSTS), "one warning per bad node, then debug lines"


async def test_one_node_failing_in_any_way_marks_only_that_node(
    node_factory: Callable[..., Awaitable[Any]], cluster_factory: ClusterFactory
) -> None:
    """Whatever a node's probe raises, the others are refreshed in the same round."""
    a, b = await node_factory(), await node_factory()
    cluster = await cluster_factory([a, b], refresh_interval_s=3600)
    health = cluster.deps.health
    key_a, key_b = f"{a.host}:{a.port}", f"{b.host}:{b.port}"
    real_info = health.client.info

    async def info(node: Node) -> Any:
        if node.key == key_a:
            raise RuntimeError("boom")
        await asyncio.sleep(0.2)  # still running when the other fails
        return await real_info(node)

    health.client.info = info  # type: ignore[method-assign]
    try:
        before = cluster.registry.get(key_b).last_refreshed_ms  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
        await health.refresh_all()
    finally:
        health.client.info = real_info  # type: ignore[method-assign]
    assert cluster.registry.get(key_b).last_refreshed_ms > before  # type: ignore[union-attr]
    assert [n.key for n in cluster.registry.online_nodes()] == [key_b]
