"""Forwarded requests through a real cluster: polls take the pooled poll client and answer
exactly what the node answers, or the same errors as the aiohttp path."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid as uuidlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import FormData, web

from clusterodm.app import Cluster
from clusterodm.config import Timeouts
from clusterodm.simnode import SimNode
from clusterodm.simnode.tasks import TaskStatus
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)


async def task_on_node(s: aiohttp.ClientSession, sim: SimNode, cluster: Cluster) -> str:
    """A task created straight on ``sim`` and routed there, with nothing held by the cluster."""
    form = FormData()
    form.add_field("images", b"x" * 100, filename="a.jpg")
    token = f"?token={sim.config.token}" if sim.config.token else ""
    uuid = (await (await s.post(f"{sim.url}/task/new{token}", data=form)).json())["uuid"]
    await cluster.deps.routes.add(uuid, f"{sim.host}:{sim.port}", "")
    return str(uuid)


async def test_polls_pass_the_nodes_answer_on_kept_alive_connections(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(token="nodesecret")
    cluster = await cluster_factory([sim], token="clustersecret")
    node = cluster.registry.get(f"{sim.host}:{sim.port}")
    assert node is not None
    async with aiohttp.ClientSession() as s:
        uuid = await task_on_node(s, sim, cluster)
        await eventually(lambda: sim.tasks[uuid].status == TaskStatus.COMPLETED, message="done")
        for path in (f"/task/{uuid}/info?with_output=1", f"/task/{uuid}/output?line=1"):
            direct = await s.get(f"{sim.url}{path}&token=nodesecret")
            via = await s.get(f"{cluster.url}{path}&token=clustersecret")
            assert via.status == direct.status == 200
            assert await via.read() == await direct.read()
            assert via.headers["Content-Type"] == direct.headers["Content-Type"]
            assert via.headers["Access-Control-Allow-Origin"] == "*"
        for _ in range(5):
            r = await s.get(f"{cluster.url}/task/{uuid}/info?token=clustersecret")
            assert (await r.json())["uuid"] == uuid
        r = await s.get(f"{cluster.url}/task/{uuid}/info?token=wrong")
        assert r.status == 401
        # HEAD takes the aiohttp path, with the same length as the node's answer
        direct = await s.head(f"{sim.url}/task/{uuid}/info?token=nodesecret")
        via = await s.head(f"{cluster.url}/task/{uuid}/info?token=clustersecret")
        assert via.status == direct.status == 200
        assert via.headers["Content-Length"] == direct.headers["Content-Length"]
    assert cluster.deps.client.polls.connections(node) == 1


async def test_hanging_node_gives_the_same_error_as_a_download(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], timeouts=Timeouts(stream_read_s=0.5))
    async with aiohttp.ClientSession() as s:
        uuid = await task_on_node(s, sim, cluster)
        sim.config.hang = True
        try:
            poll = await (await s.get(f"{cluster.url}/task/{uuid}/info")).json()
            download = await (await s.get(f"{cluster.url}/task/{uuid}/download/all.zip")).json()
        finally:
            sim.config.hang = False
    key = f"{sim.host}:{sim.port}"
    assert poll == {"error": f"Node {key} is not reachable (Timeout on reading data from socket)"}
    assert poll == download


async def test_node_down_gives_the_same_error_as_a_download(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim])
    async with aiohttp.ClientSession() as s:
        uuid = await task_on_node(s, sim, cluster)
        assert "uuid" in await (await s.get(f"{cluster.url}/task/{uuid}/info")).json()
        await sim.stop()
        poll = await (await s.get(f"{cluster.url}/task/{uuid}/info")).json()
        download = await (await s.get(f"{cluster.url}/task/{uuid}/download/all.zip")).json()
    assert poll["error"].startswith(f"Node {sim.host}:{sim.port} is not reachable (")
    assert poll == download


@pytest.fixture
async def odd_node() -> AsyncIterator[tuple[str, int, bytes]]:
    """A node whose task info is 3 MB with a length, and whose output is chunked."""
    big = json.dumps({"uuid": "x", "output": [f"line {i}" for i in range(300_000)]}).encode()

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"version": "2.2.0", "taskQueueCount": 0})

    async def task_info(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/json")

    async def task_output(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for piece in (b'["a",', b' "b",', b' "c"]'):
            await resp.write(piece)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.add_routes(
        [
            web.get("/info", info),
            web.get("/task/{uuid}/info", task_info),
            web.get("/task/{uuid}/output", task_output),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield "127.0.0.1", site.port, big
    await runner.cleanup()


async def test_big_and_chunked_answers(
    odd_node: tuple[str, int, bytes], cluster_factory: ClusterFactory
) -> None:
    host, port, big = odd_node
    cluster = await cluster_factory([])
    added = await cluster.registry.add(host, port, "")
    await cluster.deps.health.refresh(added)
    uuid = str(uuidlib.uuid4())
    await cluster.deps.routes.add(uuid, added.key, "")
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{cluster.url}/task/{uuid}/info")
        assert r.status == 200
        assert await r.read() == big, "larger than a poll answer: streamed through aiohttp"
        r = await s.get(f"{cluster.url}/task/{uuid}/output")
        assert await r.json() == ["a", "b", "c"]


class Collected:
    """Where ``_relay`` writes: the bytes, in order (stands in for aiohttp's StreamResponse)."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


async def test_relay_ends_on_the_shared_empty_reader_read_twice() -> None:
    """aiohttp's one empty reader for bodyless answers says "not the end" only once; reading it
    again used to spin for ever (#14)."""
    from aiohttp.streams import EMPTY_PAYLOAD

    from clusterodm.proxy.forward import _relay

    for _ in range(3):
        out = Collected()
        await asyncio.wait_for(_relay(EMPTY_PAYLOAD, out), 1)  # type: ignore[arg-type]
        assert out.data == b""


async def test_relay_reads_chunked_bodies_to_their_end() -> None:
    from aiohttp.base_protocol import BaseProtocol

    from clusterodm.proxy.forward import _relay

    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    ours, theirs = socket.socketpair()  # a connected transport: the reader waits only then
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=ours)  # type: ignore[arg-type, return-value]
    reader = aiohttp.StreamReader(protocol, 1 << 16, loop=loop)
    out = Collected()
    relay = asyncio.ensure_future(_relay(reader, out))  # type: ignore[arg-type]
    reader.begin_http_chunk_receiving()
    for piece in (b"abc", b"", b"defg"):
        reader.feed_data(piece)
        reader.end_http_chunk_receiving()
        reader.begin_http_chunk_receiving()
        await asyncio.sleep(0)
    assert not relay.done()  # waits for more, without spinning
    reader.feed_eof()
    await asyncio.wait_for(relay, 1)
    assert out.data == b"abcdefg"
    transport.close()
    theirs.close()
