"""Coalescing of identical polls: the Coalescer on its own, then 200 pollers of one task through
a real cluster in front of a simulated node, counting the node's requests with and without."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clusterodm.errors import NodeUnreachable
from clusterodm.nodes.coalesce import Coalescer
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually
from tests.helpers import write_atomically as write

pytestmark = pytest.mark.timeout(60)

ALICE = "alice-5b1e0c93d7a24f68"
BOB = "bob-c20d9e61aa4f7b35"
POLLERS = 200


class Gate:
    """A fetch that waits until opened, counting its calls."""

    def __init__(self, answer: Any = "answer") -> None:
        self.calls = 0
        self.opened = asyncio.Event()
        self.answer = answer

    async def __call__(self) -> Any:
        self.calls += 1
        await self.opened.wait()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


async def test_callers_arriving_together_share_one_fetch_and_only_that_one() -> None:
    shared: Coalescer[Any] = Coalescer()
    gate = Gate()
    callers = [asyncio.create_task(shared.run("k", gate)) for _ in range(50)]
    other = asyncio.create_task(shared.run("other key", Gate("other")))
    await eventually(lambda: shared.waiting == 49)
    gate.opened.set()
    assert await asyncio.gather(*callers) == ["answer"] * 50
    assert gate.calls == 1
    assert shared.in_flight == 1  # only "other" is still in flight
    other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await other
    # the answer is not kept: the next caller fetches again
    later = Gate("later")
    later.opened.set()
    assert await shared.run("k", later) == "later"
    assert later.calls == 1
    assert shared.in_flight == 0


async def test_an_error_is_shared_and_not_kept() -> None:
    shared: Coalescer[Any] = Coalescer()
    gate = Gate(NodeUnreachable("Node x is not reachable (refused)", "x"))
    callers = [asyncio.create_task(shared.run("k", gate)) for _ in range(5)]
    await eventually(lambda: shared.waiting == 4)
    gate.opened.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, NodeUnreachable) for r in results)
    assert gate.calls == 1
    assert shared.in_flight == 0


async def test_a_cancelled_fetcher_hands_over_to_a_waiter() -> None:
    shared: Coalescer[Any] = Coalescer()
    gate = Gate()
    first = asyncio.create_task(shared.run("k", gate))
    await eventually(lambda: gate.calls == 1)
    waiters = [asyncio.create_task(shared.run("k", gate)) for _ in range(3)]
    await eventually(lambda: shared.waiting == 3)
    first.cancel()
    await eventually(lambda: gate.calls == 2, message="a waiter fetches again")
    gate.opened.set()
    assert await asyncio.gather(*waiters) == ["answer"] * 3
    assert first.cancelled()
    # a waiter cancelled while waiting does not cancel the fetch the others wait for
    gate2 = Gate()
    lead = asyncio.create_task(shared.run("k", gate2))
    await eventually(lambda: gate2.calls == 1)
    quitter = asyncio.create_task(shared.run("k", gate2))
    stayer = asyncio.create_task(shared.run("k", gate2))
    await eventually(lambda: shared.waiting == 2)
    quitter.cancel()
    gate2.opened.set()
    assert await lead == "answer" and await stayer == "answer"
    assert gate2.calls == 1


def users_toml() -> str:
    return f"""
[[user]]
name = "alice"
token_sha256 = "{hashlib.sha256(ALICE.encode()).hexdigest()}"

[[user]]
name = "bob"
token = "{BOB}"
"""


async def _poll(s: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with s.get(url, params={"token": token}) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "each-sent"])
async def test_pollers_of_one_task_cost_the_node_one_request(
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    coalesce: bool,
) -> None:
    users = tmp_path / "users.toml"
    write(users, users_toml())
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], users_file=str(users))
    polls = cluster.deps.client.polls
    polls.coalesce = coalesce
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        form = aiohttp.FormData()
        form.add_field("images", b"\xff\xd8" + bytes(100), filename="a.jpg")
        base = f"{cluster.url}/task/new"
        _, body = await _post(s, f"{base}/init", ALICE, aiohttp.FormData({"name": "t"}))
        uuid = body["uuid"]
        assert (await _post(s, f"{base}/upload/{uuid}", ALICE, form))[1] == {"success": True}
        assert (await _post(s, f"{base}/commit/{uuid}", ALICE))[1] == {"uuid": uuid}
        await eventually(lambda: uuid in sim.tasks)
        path = f"/task/{uuid}/info"
        url = f"{cluster.url}{path}"
        assert (await _poll(s, url, ALICE))[1]["uuid"] == uuid

        sim.config.hang = True  # every poll that reaches the node waits there
        before = sim.requests[path]
        try:
            alice = [asyncio.create_task(_poll(s, url, ALICE)) for _ in range(POLLERS)]
            # other users' polls of the same task, and bad tokens, among them
            bob = [asyncio.create_task(_poll(s, url, BOB)) for _ in range(10)]
            nobody = [asyncio.create_task(_poll(s, url, "wrong")) for _ in range(3)]
            if coalesce:
                await eventually(lambda: polls._shared.waiting == POLLERS - 1)
                assert sim.requests[path] - before == 1
            else:
                await eventually(lambda: sim.requests[path] - before == POLLERS)
        finally:
            sim.config.hang = False
        answers = await asyncio.gather(*alice)
        assert all(st == 200 and a["uuid"] == uuid for st, a in answers)
        for st, a in await asyncio.gather(*bob):
            assert st == 200 and a["error"].startswith(f"Invalid route for taskId {uuid}")
        assert [st for st, _ in await asyncio.gather(*nobody)] == [401] * 3
        sent = sim.requests[path] - before
        assert sent == (1 if coalesce else POLLERS)
        # nothing is kept once answered: the next poll reaches the node again
        assert (await _poll(s, url, ALICE))[1]["uuid"] == uuid
        assert sim.requests[path] - before == sent + 1


async def _post(
    s: aiohttp.ClientSession, url: str, token: str, data: Any = None
) -> tuple[int, Any]:
    async with s.post(url, params={"token": token}, data=data) as r:
        return r.status, await r.json()
