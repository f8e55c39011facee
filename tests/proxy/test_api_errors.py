"""Every bad input gets a NodeODM-style answer, through real HTTP against a real cluster."""

from __future__ import annotations

import json
import uuid as uuidlib

import aiohttp
import pytest
from aiohttp import FormData

from clusterodm.config import Timeouts
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually


def form(**fields: str) -> FormData:
    f = FormData(default_to_multipart=True)
    for k, v in fields.items():
        f.add_field(k, v)
    return f


async def test_info_is_synthetic_and_engine_copied(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim])
    async with aiohttp.ClientSession() as s:
        info = await (await s.get(f"{cluster.url}/info")).json()
    assert info["version"] == "1.5.3"
    assert info["taskQueueCount"] == 0
    assert info["maxImages"] is None
    assert info["engine"] == "odm"
    assert info["maxParallelTasks"] > 1000


async def test_options_are_the_reference_nodes(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim])
    async with aiohttp.ClientSession() as s:
        via = await (await s.get(f"{cluster.url}/options")).json()
        direct = await (await s.get(f"{sim.url}/options")).json()
    assert via == direct and len(via) == 80


async def test_unknown_uuid_errors(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()])
    u = str(uuidlib.uuid4())
    async with aiohttp.ClientSession() as s:
        for what in ("info", "output", "download/all.zip"):
            r = await s.get(f"{cluster.url}/task/{u}/{what}")
            body = await r.json()
            assert r.status == 200
            action = what.split("/")[0]
            assert body == {"error": f"Invalid route for taskId {u}:{action}, no task table entry."}
        r = await s.get(f"{cluster.url}/task/..%2F..%2Fetc/info")
        assert "error" in await r.json()
        r = await s.post(f"{cluster.url}/task/cancel", data={})
        assert await r.json() == {"error": "uuid param missing."}
        r = await s.post(f"{cluster.url}/task/new/upload/{u}", data=form(x="1"))
        assert await r.json() == {"error": "Invalid uuid (not found)"}
        r = await s.post(f"{cluster.url}/task/new/commit/{u}")
        assert await r.json() == {"error": "Invalid uuid (not found)"}


async def test_bad_options_refused_at_init(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()])
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{cluster.url}/task/new/init", data=form(options="[{bad json"))
        assert "error" in await r.json()
        opts = json.dumps([{"name": "feature-type", "value": "foo"}])
        r = await s.post(f"{cluster.url}/task/new/init", data=form(options=opts))
        body = await r.json()
        assert json.loads(body["error"]) == [
            {"name": "feature-type", "error": "Invalid value foo (not in enum)"}
        ]
        opts = json.dumps([{"name": "min-num-features", "value": "abc"}])
        body = await (await s.post(f"{cluster.url}/task/new/init", data=form(options=opts))).json()
        assert "out of range" in body["error"]


async def test_set_uuid_rules(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()])
    u = str(uuidlib.uuid4())
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            f"{cluster.url}/task/new/init", data=form(name="a"), headers={"set-uuid": "nope"}
        )
        assert await r.json() == {"error": "Invalid set-uuid: nope"}
        r = await s.post(f"{cluster.url}/task/new/init", data=form(), headers={"set-uuid": u})
        assert await r.json() == {"uuid": u}


async def test_token_required_with_401(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(token="nodesecret")
    cluster = await cluster_factory([sim], token="clustersecret")
    async with aiohttp.ClientSession() as s:
        for path in ("/info", "/options", "/task/list"):
            r = await s.get(f"{cluster.url}{path}")
            assert r.status == 401
            assert "error" in await r.json()
            r = await s.get(f"{cluster.url}{path}?token=wrong")
            assert r.status == 401
        r = await s.get(f"{cluster.url}/options?token=clustersecret")
        assert r.status == 200 and len(await r.json()) == 80  # node token swapped in
        r = await s.get(f"{cluster.url}/auth/info")
        assert (await r.json())["message"] == "Authentication not available on this node"


async def test_cors_preflight_and_headers(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()])
    async with aiohttp.ClientSession() as s:
        r = await s.options(
            f"{cluster.url}/task/new/init",
            headers={
                "Origin": "http://webodm.local",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "set-uuid",
            },
        )
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "http://webodm.local"
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        assert r.headers["Access-Control-Allow-Headers"] == "set-uuid"
        r = await s.get(f"{cluster.url}/info", headers={"Origin": "http://x.test"})
        assert r.headers["Access-Control-Allow-Origin"] == "http://x.test"


async def test_no_online_node_is_a_clear_error(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory([])
    async with aiohttp.ClientSession() as s:
        body = await (await s.post(f"{cluster.url}/task/new/init", data=form())).json()
        assert "no nodes" in body["error"].lower()
        body = await (await s.get(f"{cluster.url}/options")).json()
        assert "error" in body


async def test_node_answering_garbage_or_hanging(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=30)
    cluster = await cluster_factory([sim], timeouts=Timeouts(api_s=1, stream_read_s=1))
    u = str(uuidlib.uuid4())
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{cluster.url}/task/new", data=_files_form(2), headers={"set-uuid": u})
        assert await r.json() == {"uuid": u}
        await eventually(lambda: cluster.deps.routes.get(u) is not None, message="route stored")
        sim.config.garbage = True
        r = await s.post(f"{cluster.url}/task/cancel", data={"uuid": u})
        assert "error" in await r.json()
        sim.config.garbage = False
        sim.config.hang = True
        r = await s.post(f"{cluster.url}/task/cancel", data={"uuid": u})
        assert "error" in await r.json()
        sim.config.hang = False


def _files_form(count: int) -> FormData:
    f = FormData()
    f.add_field("name", "single request")
    for i in range(count):
        f.add_field("images", b"x" * 100, filename=f"img{i}.jpg")
    return f


@pytest.mark.parametrize("path", ["/task/new/commit/../../x", "/nothing/here"])
async def test_unknown_paths(
    path: str, simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()])
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{cluster.url}{path}")
        assert r.status in (404, 405)
        assert "error" in await r.json()


async def test_task_list_holds_cluster_tasks(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim])
    async with aiohttp.ClientSession() as s:
        u = (await (await s.post(f"{cluster.url}/task/new", data=_files_form(1))).json())["uuid"]
        await eventually(lambda: cluster.deps.routes.get(u) is not None)
        listed = await (await s.get(f"{cluster.url}/task/list")).json()
    assert {"uuid": u} in listed


async def test_task_new_takes_fields_after_files(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim])
    f = FormData()
    f.add_field("images", b"x" * 10, filename="a.jpg")
    f.add_field("name", "named late")
    f.add_field("options", json.dumps([{"name": "dsm", "value": True}]))
    async with aiohttp.ClientSession() as s:
        uuid = (await (await s.post(f"{cluster.url}/task/new", data=f)).json())["uuid"]
    await eventually(lambda: uuid in sim.tasks)
    assert sim.tasks[uuid].name == "named late"
    assert {"name": "dsm", "value": True} in sim.tasks[uuid].options


async def test_task_list_hides_tasks_their_node_forgot(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=30, parallel=2)
    cluster = await cluster_factory([sim])
    async with aiohttp.ClientSession() as s:
        kept = (await (await s.post(f"{cluster.url}/task/new", data=_files_form(1))).json())["uuid"]
        gone = (await (await s.post(f"{cluster.url}/task/new", data=_files_form(1))).json())["uuid"]
        await eventually(lambda: kept in sim.tasks and gone in sim.tasks)
        await s.post(f"{sim.url}/task/remove", data={"uuid": gone})
        listed = [x["uuid"] for x in await (await s.get(f"{cluster.url}/task/list")).json()]
    assert kept in listed
    assert gone not in listed
