"""A frozen or hanging node: polls, task lists and /info stay bounded in time.

The node is the real NodeODM frozen with SIGSTOP, or the simulated node with ``hang`` on: it
accepts connections and never answers. A poll of a task running there gets the cluster's last
known state of the task within the poll limit, marked as such (``lastKnown`` and a line in the
output), never a restart from progress 0; ``/task/list`` is as bounded; ``/info`` answers within
a second throughout. Then the node comes back and answers for itself again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from clusterodm.config import Timeouts
from tests.conftest import ClusterFactory
from tests.e2e.test_queue_failover import new_task
from tests.helpers import eventually

POLL_S = 1.5
SLACK_S = 1.5  # the poll limit's watchdog may fire up to a second late, plus a loaded CI


def freeze(node: Any) -> None:
    if node.kind == "real":
        node.pause()
    else:
        node.config.hang = True


def thaw(node: Any) -> None:
    if node.kind == "real":
        node.resume()
    else:
        node.config.hang = False


async def timed_json(s: aiohttp.ClientSession, url: str) -> tuple[float, Any]:
    started = time.monotonic()
    async with s.get(url, timeout=aiohttp.ClientTimeout(total=30)) as r:
        body = await r.json(content_type=None)
    return time.monotonic() - started, body


async def test_polls_of_a_frozen_node_get_the_last_known_state(
    node_factory: Callable[..., Awaitable[Any]], cluster_factory: ClusterFactory
) -> None:
    node = await node_factory(test_seconds=60)
    cluster = await cluster_factory([node], timeouts=Timeouts(poll_s=POLL_S))
    url = cluster.url
    async with aiohttp.ClientSession() as s:
        uuid = await new_task(s, url, images=2)

        async def running_on_node() -> Any:
            _, body = await timed_json(s, f"{url}/task/{uuid}/info?with_output=0")
            ok = body.get("status", {}).get("code") == 20 and "lastKnown" not in body
            return body if ok and cluster.deps.routes.get(uuid) is not None else None

        before = await eventually(running_on_node, timeout_s=20, message="task running on node")
        freeze(node)
        try:
            for _ in range(2):
                took, body = await timed_json(s, f"{url}/task/{uuid}/info?with_output=0")
                assert took < POLL_S + SLACK_S, f"info poll took {took:.1f} s"
                assert body["uuid"] == uuid
                assert body["status"]["code"] == 20
                assert body["lastKnown"]["node"] == f"{node.host}:{node.port}"
                assert body["progress"] == before["progress"]
                assert body["processingTime"] == before["processingTime"]
                assert body["imagesCount"] == 2
                assert "did not answer in time" in body["output"][-1]

                took, lines = await timed_json(s, f"{url}/task/{uuid}/output")
                assert took < POLL_S + SLACK_S, f"output poll took {took:.1f} s"
                assert "did not answer in time" in lines[-1]

                took, listed = await timed_json(s, f"{url}/task/list")
                assert took < POLL_S + SLACK_S, f"task list took {took:.1f} s"
                assert {"uuid": uuid} in listed

                for _ in range(3):
                    took, info = await timed_json(s, f"{url}/info")
                    assert took < 1.0, f"/info took {took:.2f} s"
                    assert "taskQueueCount" in info
        finally:
            thaw(node)
        await eventually(running_on_node, timeout_s=20, message="the node answers again")
