"""Several instances on one Redis (in this process): notices, leader, claims, takeover, outages.

The same scenario with real processes, pyodm and ``kill -9`` is in tests/e2e/test_scale_out.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData

from clusterodm.app import Cluster
from clusterodm.config import DispatchSettings, FailoverSettings, ScaleOutSettings
from clusterodm.model import TaskStage, TaskStatus
from clusterodm.store.redis import RedisStore
from clusterodm.tasks.scaleout import ScaleOut, task_key
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually
from tests.redis_server import RedisServer, redis_server_or_skip

FAST = ScaleOutSettings(claim_ttl_s=1.5, scan_s=0.3)
# early forwarding picks its node apart from the queue (docs/scale-out.md): these tests are
# about the queue and the slots it hands out
QUICK_QUEUE = DispatchSettings(
    backoff_base_s=0.05, backoff_max_s=0.2, queue_poll_s=0.1, early_forwarding=False
)


class Peak:
    """The highest value a measure took."""

    value = 0


@contextlib.asynccontextmanager
async def peak(measure: Callable[[], int]) -> AsyncIterator[Peak]:
    """Poll ``measure`` every 5 ms while the block runs; its highest value."""
    most = Peak()
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            most.value = max(most.value, measure())
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        yield most
    finally:
        done.set()
        await watcher


def scaleout(cluster: Cluster) -> ScaleOut:
    part = cluster.extra["scale-out"]
    assert isinstance(part, ScaleOut)
    return part


async def three(
    cluster_factory: ClusterFactory,
    url: str,
    staging: Path,
    nodes: list[Any],
    settings: ScaleOutSettings = FAST,
    **overrides: Any,
) -> list[Cluster]:
    first = await cluster_factory(
        nodes, store=url, data_dir=staging, scale_out=settings, **overrides
    )
    rest = [
        await cluster_factory(store=url, data_dir=staging, scale_out=settings, **overrides)
        for _ in range(2)
    ]
    clusters = [first, *rest]
    if nodes:  # the others loaded the node before its first /info was stored: wait for it
        await eventually(lambda: all(c.registry.online_nodes() for c in clusters), timeout_s=5)
    return clusters


async def json_of(resp: aiohttp.ClientResponse) -> Any:
    async with resp:
        return await resp.json()


async def code(s: aiohttp.ClientSession, url: str, uuid: str) -> Any:
    body = await json_of(await s.get(f"{url}/task/{uuid}/info"))
    return body.get("status", {}).get("code")


def images(*names: str) -> FormData:
    form = FormData()
    for name in names:
        form.add_field("images", name.encode() * 100, filename=name)
    return form


async def test_a_node_added_on_one_instance_is_seen_by_all_at_once(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    slow_scan = ScaleOutSettings(claim_ttl_s=5.0, scan_s=60.0)  # only the notice can do it
    a, b, c = await three(cluster_factory, store_url, tmp_path / "shared", [], slow_scan)
    sim = await simnode_factory()
    started = time.monotonic()
    await b.registry.add(sim.host, sim.port)
    key = f"{sim.host}:{sim.port}"
    for other in (a, c):
        await eventually(lambda o=other: o.registry.get(key), timeout_s=5, message="node seen")
    assert time.monotonic() - started < 5.0
    await c.registry.set_locked(key, True)
    await eventually(lambda: (n := a.registry.get(key)) is not None and n.locked, timeout_s=5)
    await a.registry.remove(key)
    await eventually(lambda: b.registry.get(key) is None and c.registry.get(key) is None)


async def test_one_leader_refreshes_and_a_successor_takes_over(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory()
    clusters = await three(cluster_factory, store_url, tmp_path / "shared", [sim])
    leaders = [c for c in clusters if scaleout(c).is_leader]
    assert len(leaders) == 1
    followers = [c for c in clusters if c is not leaders[0]]
    key = f"{sim.host}:{sim.port}"
    for follower in followers:
        node = follower.registry.get(key)
        assert node is not None and follower.registry.is_online(node), "reads the leader's /info"
    await leaders[0].stop()
    await eventually(
        lambda: sum(scaleout(c).is_leader for c in followers) == 1,
        timeout_s=5,
        message="a new leader",
    )


async def test_init_upload_commit_and_polls_on_different_instances(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory(test_seconds=0.2)
    a, b, c = await three(cluster_factory, store_url, tmp_path / "shared", [sim])
    async with aiohttp.ClientSession() as s:
        uuid = (await json_of(await s.post(f"{a.url}/task/new/init", data=FormData({})))).get(
            "uuid"
        )
        assert isinstance(uuid, str)
        up = await s.post(f"{b.url}/task/new/upload/{uuid}", data=images("1.jpg", "2.jpg"))
        assert await json_of(up) == {"success": True}
        up = await s.post(f"{c.url}/task/new/upload/{uuid}", data=images("3.jpg"))
        assert await json_of(up) == {"success": True}
        assert await json_of(await s.post(f"{c.url}/task/new/commit/{uuid}")) == {"uuid": uuid}
        for cluster in (a, b, c):
            assert await code(s, cluster.url, uuid) in (10, 20, 40), "every instance knows it"
        for cluster in (a, b, c):
            await eventually(lambda u=cluster.url: _is(code(s, u, uuid), 40), timeout_s=15)
        assert sorted(sim.tasks[uuid].images) == ["1.jpg", "2.jpg", "3.jpg"]
        zips = []
        for cluster in (a, b, c):
            async with s.get(f"{cluster.url}/task/{uuid}/download/all.zip") as r:
                assert r.status == 200
                zips.append(await r.read())
        assert zips[0] and zips[0] == zips[1] == zips[2]
        sent = [
            c.metrics.registry.get_sample_value("clusterodm_dispatches_total") for c in (a, b, c)
        ]
        assert sum(x or 0 for x in sent) == 1, "forwarded by one instance only"

        # removed through one instance: the others stop answering for it at once
        await b.deps.routes.fetch(uuid)
        removed = await s.post(f"{a.url}/task/remove", data={"uuid": uuid})
        assert await json_of(removed) == {"success": True}
        await eventually(lambda: b.deps.routes.get(uuid) is None, timeout_s=5)
        info = await json_of(await s.get(f"{b.url}/task/{uuid}/info"))
        assert "error" in info


async def test_early_forwarding_across_instances(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    """Uploads on two instances reach the node before commit, through one pipeline record;
    the commit on a third finishes it there without sending any image again."""
    sim = await simnode_factory(test_seconds=0.2)
    a, b, c = await three(cluster_factory, store_url, tmp_path / "shared", [sim])
    payload = {name: os.urandom(3000) for name in ("1.jpg", "2.jpg", "3.jpg")}

    def form(*names: str) -> FormData:
        f = FormData()
        for name in names:
            f.add_field("images", payload[name], filename=name)
        return f

    async with aiohttp.ClientSession() as s:
        init = await json_of(await s.post(f"{a.url}/task/new/init", data=FormData({})))
        uuid = init["uuid"]
        up = await s.post(f"{b.url}/task/new/upload/{uuid}", data=form("1.jpg", "2.jpg"))
        assert await json_of(up) == {"success": True}
        up = await s.post(f"{c.url}/task/new/upload/{uuid}", data=form("3.jpg"))
        assert await json_of(up) == {"success": True}
        assert sim.upload_requests == 2, "both requests relayed before commit"
        assert uuid not in sim.tasks
        assert await json_of(await s.post(f"{a.url}/task/new/commit/{uuid}")) == {"uuid": uuid}
        await eventually(lambda: _is(code(s, a.url, uuid), 40), timeout_s=15)
    assert sim.upload_requests == 2, "nothing sent again at commit"
    for name, data in payload.items():
        assert (sim.tasks[uuid].directory / "images" / name).read_bytes() == data


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_a_task_whose_claim_lapses_is_taken_over(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory()
    a, b, _ = await three(cluster_factory, store_url, tmp_path / "shared", [sim])
    coordination = a.store
    assert isinstance(coordination, RedisStore)
    async with aiohttp.ClientSession() as s:
        uuid = (await json_of(await s.post(f"{a.url}/task/new/init", data=FormData({}))))["uuid"]
        up = await s.post(f"{a.url}/task/new/upload/{uuid}", data=images("x.jpg"))
        assert await json_of(up) == {"success": True}
        # an instance that dies right after claiming: its claim lapses, nobody renews it
        assert await coordination.claim(task_key(uuid), "dead-instance", 1500)
        assert await json_of(await s.post(f"{b.url}/task/new/commit/{uuid}")) == {"uuid": uuid}
        assert uuid not in sim.tasks
        await eventually(lambda: uuid in sim.tasks, timeout_s=10, message="taken over")
        await eventually(lambda: _is(code(s, a.url, uuid), 40), timeout_s=10)
    assert sum(scaleout(c).takeovers for c in (a, b, _)) >= 1


async def committed_while_node_hangs(s: aiohttp.ClientSession, a: Cluster, sim: Any) -> str:
    """A task committed on ``a`` whose node then answers nothing: ``a``'s forwarding waits."""
    uuid = (await json_of(await s.post(f"{a.url}/task/new/init", data=FormData({}))))["uuid"]
    await json_of(await s.post(f"{a.url}/task/new/upload/{uuid}", data=images("x.jpg")))
    sim.config.hang = True
    assert await json_of(await s.post(f"{a.url}/task/new/commit/{uuid}")) == {"uuid": uuid}
    return str(uuid)


async def test_a_cancel_on_one_instance_stops_the_dispatch_on_another(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory()
    a, b, _ = await three(cluster_factory, store_url, tmp_path / "shared", [sim])
    async with aiohttp.ClientSession() as s:
        uuid = await committed_while_node_hangs(s, a, sim)
        assert a.deps.dispatcher.active(uuid)
        cancel = await s.post(f"{b.url}/task/cancel", data={"uuid": uuid})
        assert await json_of(cancel) == {"success": True}
        await eventually(lambda: not a.deps.dispatcher.active(uuid), timeout_s=5)
        sim.config.hang = False
        assert await code(s, a.url, uuid) == 50


async def test_files_staged_where_another_instance_cannot_see_them(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory()
    a = await cluster_factory([sim], store=store_url, data_dir=tmp_path / "a", scale_out=FAST)
    b = await cluster_factory(store=store_url, data_dir=tmp_path / "b", scale_out=FAST)
    async with aiohttp.ClientSession() as s:
        uuid = (await json_of(await s.post(f"{a.url}/task/new/init", data=FormData({}))))["uuid"]
        up = await json_of(await s.post(f"{b.url}/task/new/upload/{uuid}", data=images("x.jpg")))
        assert "must share --data-dir" in up["error"]


@pytest.fixture
def lasting_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server that keeps its data across a restart (append-only file), as in production."""
    server = redis_server_or_skip()
    server.stop()
    (tmp_path / "redis").mkdir()
    server.extra_args = ["--appendonly", "yes", "--appendfsync", "always"]
    server.extra_args += ["--dir", str(tmp_path / "redis")]
    server.start()
    yield server
    server.stop()


async def test_redis_going_away_is_a_clear_error_and_the_instances_recover(
    lasting_server: RedisServer,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory()
    a, b, c = await three(cluster_factory, lasting_server.url, tmp_path / "shared", [sim])
    async with aiohttp.ClientSession() as s:
        lasting_server.stop()
        started = time.monotonic()
        async with asyncio.timeout(15):
            refused = await json_of(await s.post(f"{b.url}/task/new/init", data=FormData({})))
        assert "State store unavailable" in refused["error"]
        assert time.monotonic() - started < 10.0
        await eventually(lambda: not any(scaleout(x).is_leader for x in (a, b, c)), timeout_s=10)

        lasting_server.start()
        await eventually(lambda: sum(scaleout(x).is_leader for x in (a, b, c)) == 1, timeout_s=10)
        for cluster in (a, b, c):
            init = await json_of(await s.post(f"{cluster.url}/task/new/init", data=FormData({})))
            assert "uuid" in init, init
        # notices flow again: a node added now reaches every instance
        other = await simnode_factory()
        await a.registry.add(other.host, other.port)
        key = f"{other.host}:{other.port}"
        await eventually(lambda: b.registry.get(key) and c.registry.get(key), timeout_s=5)


# --- counted across the cluster: slots, queue, flood, cancels, a store that lost its state ---


async def new_task(s: aiohttp.ClientSession, url: str, name: str = "x.jpg") -> str:
    body = await json_of(await s.post(f"{url}/task/new", data=images(name)))
    assert "uuid" in body, body
    return str(body["uuid"])


def on_node(sim: Any) -> int:
    """Tasks the node holds queued or running (what its /info calls taskQueueCount)."""
    return sum(1 for t in sim.tasks.values() if int(t.status) in (10, 20))


async def test_a_one_slot_node_never_gets_two_tasks_from_three_instances(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory(test_seconds=0.4, parallel=1)
    clusters = await three(
        cluster_factory, store_url, tmp_path / "shared", [sim], dispatch=QUICK_QUEUE
    )
    async with peak(lambda: on_node(sim)) as most, aiohttp.ClientSession() as s:
        targets = [clusters[0], clusters[1], clusters[2], clusters[1], clusters[2]]
        uuids = await asyncio.gather(*(new_task(s, c.url) for c in targets))
        for uuid in uuids:
            await eventually(lambda u=uuid: _is(code(s, clusters[0].url, u), 40), timeout_s=30)
    assert most.value == 1, "never two tasks on the node's one slot"
    assert sorted(sim.tasks) == sorted(uuids), "each task reached the node once"
    sent = [c.metrics.registry.get_sample_value("clusterodm_dispatches_total") for c in clusters]
    assert sum(x or 0 for x in sent) == len(uuids)


def queued_line(entry: Any) -> str:
    lines = [x for x in entry.output if x.startswith("Queued at the cluster")]
    return lines[-1] if lines else ""


async def test_queue_positions_and_max_queue_are_the_clusters(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory(test_seconds=30, parallel=1)
    a, b, c = await three(
        cluster_factory, store_url, tmp_path / "shared", [sim], dispatch=QUICK_QUEUE, max_queue=3
    )
    async with aiohttp.ClientSession() as s:
        first = await new_task(s, a.url)
        await eventually(lambda: first in sim.tasks, timeout_s=10, message="first on the node")
        waiting = [await new_task(s, x.url) for x in (b, c, a)]  # one per instance

        async def positions() -> list[str]:
            lines = []
            for uuid in waiting:
                entry = await b.store.get_task(uuid)
                lines.append(queued_line(entry) if entry is not None else "")
            return lines

        async def all_placed() -> bool:
            return all(" of 3," in line for line in await positions())

        await eventually(all_placed, timeout_s=10, message="cluster-wide positions")
        lines = await positions()
        assert [line.split(" of ")[0][-1] for line in lines] == ["1", "2", "3"], lines
        body = await json_of(await s.get(f"{c.url}/task/{waiting[0]}/info?with_output=0"))
        assert body["status"]["code"] == 10
        assert any("position 1 of 3" in x for x in body["output"]), "any instance shows it"

        await eventually(lambda: all(x.deps.dispatcher.queue_length() == 3 for x in (a, b, c)))
        refused = await json_of(await s.post(f"{b.url}/task/new", data=images("y.jpg")))
        assert "queue is full" in refused.get("error", ""), refused
    assert first not in [w for w in waiting]


async def test_flood_limit_counts_inits_on_every_instance(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory()
    a, b, c = await three(cluster_factory, store_url, tmp_path / "shared", [sim], flood_limit=2)
    async with aiohttp.ClientSession() as s:
        for x in (a, b):
            body = await json_of(await s.post(f"{x.url}/task/new/init", data=FormData({})))
            assert "uuid" in body, body
        refused = await json_of(await s.post(f"{c.url}/task/new/init", data=FormData({})))
        assert "slow down" in refused.get("error", ""), refused


async def test_a_cancel_written_during_forwarding_is_not_overwritten(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory()
    a, b, _ = await three(cluster_factory, store_url, tmp_path / "shared", [sim])
    async with aiohttp.ClientSession() as s:
        uuid = await committed_while_node_hangs(s, a, sim)
        await eventually(
            lambda: (t := a.deps.table.get(uuid)) is not None and t.stage is TaskStage.DISPATCHING,
            message="forwarding",
        )
        # b's cancel is written while a's step is in flight, before a hears of it
        await b.deps.table.refresh(uuid)
        await b.deps.table.update(uuid, status=TaskStatus.CANCELED, stage=TaskStage.FAILED)
        sim.config.hang = False
        await eventually(lambda: not a.deps.dispatcher.active(uuid), timeout_s=10)
        stored = await a.store.get_task(uuid)
        assert stored is not None and stored.status is TaskStatus.CANCELED, stored
        assert await a.store.get_route(uuid) is None, "no route to a cancelled task"
        assert uuid not in sim.tasks or int(sim.tasks[uuid].status) == 50
        for cluster in (a, b):
            assert await code(s, cluster.url, uuid) == 50


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of this test's own, without persistence: a restart comes back empty."""
    server = redis_server_or_skip()
    yield server
    server.stop()


async def test_a_redis_that_restarts_empty_gets_the_state_written_back(
    own_server: RedisServer,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    sim = await simnode_factory()
    a, b, c = await three(cluster_factory, own_server.url, tmp_path / "shared", [sim])
    async with aiohttp.ClientSession() as s:
        uuid = await new_task(s, b.url)
        await eventually(lambda: _is(code(s, a.url, uuid), 40), timeout_s=10)
        await eventually(lambda: not any(x.deps.dispatcher.active(uuid) for x in (a, b, c)))
        assert [x.deps.routes.get(uuid) is not None for x in (a, b, c)] == [True] * 3
        own_server.stop()
        own_server.start()  # empty
        await eventually(
            lambda: all(scaleout(x).recoveries >= 1 for x in (a, b, c)),
            timeout_s=15,
            message="every instance noticed",
        )
        key = f"{sim.host}:{sim.port}"
        assert [n.key for n in await a.store.list_nodes()] == [key]
        route = await a.store.get_route(uuid)
        assert route is not None and route.node_key == key
        for cluster in (a, b, c):
            assert await code(s, cluster.url, uuid) == 40
        again = await new_task(s, c.url)
        await eventually(lambda: _is(code(s, a.url, again), 40), timeout_s=10)


async def test_a_users_concurrency_limit_counts_tasks_on_every_instance(
    store_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[[user]]\nname = "ann"\ntoken = "ann-token"\nmax_concurrent_tasks = 1\n')
    sim = await simnode_factory(test_seconds=0.5, parallel=4)  # slots are not what limits
    clusters = await three(
        cluster_factory,
        store_url,
        tmp_path / "shared",
        [sim],
        dispatch=QUICK_QUEUE,
        users_file=str(users),
        failover=FailoverSettings(check_s=0.1),  # sees a finished task soon: ann may go on
    )
    async with peak(lambda: on_node(sim)) as most, aiohttp.ClientSession() as s:

        async def submit(url: str) -> str:
            r = await s.post(f"{url}/task/new", data=images("x.jpg"), params={"token": "ann-token"})
            body = await json_of(r)
            assert "uuid" in body, body
            return str(body["uuid"])

        async def finished(uuid: str) -> bool:
            r = await s.get(f"{clusters[0].url}/task/{uuid}/info", params={"token": "ann-token"})
            return bool((await json_of(r)).get("status", {}).get("code") == 40)

        uuids = await asyncio.gather(*(submit(c.url) for c in clusters))
        for uuid in uuids:
            await eventually(lambda u=uuid: finished(u), timeout_s=30, message="completed")
    assert most.value == 1, "ann's limit of one task counts her tasks on all instances"
    assert sorted(sim.tasks) == sorted(uuids)
