"""The proxy's one middleware, through real HTTP: CORS headers on every kind of answer, NodeODM
errors, the token check, and what it counts for ``/metrics``."""

from __future__ import annotations

import uuid as uuidlib

import aiohttp
import pytest
from aiohttp import FormData

from clusterodm.app import Cluster
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)
ORIGIN = {"Origin": "http://webodm.test"}


def requests_counted(cluster: Cluster, route: str, status: int) -> float:
    value = cluster.metrics.registry.get_sample_value(
        "clusterodm_requests_total", {"route": route, "status": str(status)}
    )
    return value or 0.0


def assert_cors(r: aiohttp.ClientResponse) -> None:
    assert r.headers["Access-Control-Allow-Origin"] == "http://webodm.test"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert r.headers["Vary"] == "Origin"


async def test_cors_on_errors_redirects_and_streams(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(zip_size=9 << 20)  # large enough to be streamed
    plain = await cluster_factory([sim])
    redirecting = await cluster_factory([sim], downloads_from_s3="https://bucket.s3.example")
    form = FormData()
    form.add_field("images", b"x" * 100, filename="a.jpg")
    async with aiohttp.ClientSession() as s:
        uuid = (await (await s.post(f"{plain.url}/task/new", data=form)).json())["uuid"]
        await eventually(lambda: plain.deps.routes.get(uuid) is not None, message="routed")
        await redirecting.deps.routes.add(uuid, f"{sim.host}:{sim.port}", "")

        r = await s.get(f"{plain.url}/nothing/here", headers=ORIGIN)
        assert r.status == 404 and await r.json() == {"error": "Cannot GET /nothing/here"}
        assert_cors(r)
        r = await s.get(
            f"{redirecting.url}/task/{uuid}/download/all.zip",
            headers=ORIGIN,
            allow_redirects=False,
        )
        assert r.status == 302
        assert r.headers["Location"] == f"https://bucket.s3.example/{uuid}/all.zip"
        assert_cors(r)
        await eventually(
            lambda: sim.tasks[uuid].status.name == "COMPLETED", message="task finished"
        )
        async with s.get(f"{plain.url}/task/{uuid}/download/all.zip", headers=ORIGIN) as r:
            assert r.status == 200
            assert r.content_length == 9 << 20
            assert_cors(r)
            assert len(await r.read()) == 9 << 20
        r = await s.get(f"{plain.url}/task/{uuid}/info")
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Vary" not in r.headers


async def test_token_errors_and_counts(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()], token="secret")
    u = str(uuidlib.uuid4())
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{cluster.url}/task/{u}/info", headers=ORIGIN)
        assert r.status == 401 and "error" in await r.json()
        assert_cors(r)
        r = await s.get(f"{cluster.url}/task/{u}/info?token=secret")
        assert await r.json() == {
            "error": f"Invalid route for taskId {u}:info, no task table entry."
        }
        r = await s.options(f"{cluster.url}/task/{u}/info", headers=ORIGIN)
        assert r.status == 204, "preflights need no token"
        assert_cors(r)
        r = await s.get(f"{cluster.url}/auth/info")
        assert r.status == 200, "public paths need no token"
        r = await s.post(f"{cluster.url}/info?token=secret")
        assert r.status == 405 and await r.json() == {"error": "Cannot POST /info"}
    assert requests_counted(cluster, "/task/{uuid}/info", 401) == 1
    assert requests_counted(cluster, "/task/{uuid}/info", 200) == 1
    assert requests_counted(cluster, "/auth/info", 200) == 1
    assert requests_counted(cluster, "other", 204) == 1, "no route takes OPTIONS"
    assert requests_counted(cluster, "other", 405) == 1
