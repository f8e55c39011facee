"""The inputs that made the cluster answer 500 with a traceback (#15), one test each: every one
is now a 400 or NodeODM's ``{"error"}`` answer, with at most a line in the log.

Sent to a cluster with ``--token`` in front of the simulated node and of the real NodeODM, and
to the admin web beside it; raw bytes go through a socket of their own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from clusterodm.admin import AdminCommands, build_admin_app
from clusterodm.app import Cluster
from clusterodm.errors import NodeRejected
from clusterodm.model import Node
from clusterodm.nodes import paths
from clusterodm.nodes.client import NodeClient
from tests.conftest import ClusterFactory
from tests.helpers import serving
from tests.hostile.setup import TOKEN, Answer, Attack, Counts, all_records, tracebacks

NESTED = "[" * 100_000 + "]" * 100_000
DIGITS = "7" * 5000
WRITTEN_OUT_1E400 = "1" + "0" * 400


@pytest.fixture
async def target(
    node_factory: Any,
    cluster_factory: ClusterFactory,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> AsyncIterator[Attack]:
    """A ``--token`` cluster in front of one node; checks the log and /info afterwards."""
    caplog.set_level(logging.DEBUG)
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory([node], token=TOKEN)
    async with aiohttp.ClientSession() as session:
        attack = Attack(cluster, "token", session, getattr(node, "kind", "sim"))
        yield attack
        found = tracebacks(all_records(caplog))
        attack.counts.tracebacks = len(found)
        record_property("hostile", attack.counts.as_dict())
        assert not found, [(r.name, r.getMessage()) for r in found]
        assert attack.counts.server_errors == 0
        info = await attack.send(f"/info?token={TOKEN}")
        assert info.status == 200


def nodeodm_error(answer: Answer) -> str:
    """A 400, or NodeODM's 200 ``{"error"}``: the error text."""
    assert answer.status in (200, 400, 404, 413), answer
    body = answer.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), answer
    return str(body["error"])


def form(fields: dict[str, str], files: int = 0) -> aiohttp.FormData:
    f = aiohttp.FormData()
    for k, v in fields.items():
        f.add_field(k, v)
    for i in range(files):
        f.add_field("images", b"x" * 100, filename=f"i{i}.jpg")
    return f


@pytest.mark.parametrize(
    "options",
    [
        NESTED,
        '[{"name": "min-num-features", "value": ' + DIGITS + "}]",
        '[{"name": "min-num-features", "value": ' + WRITTEN_OUT_1E400 + "}]",
        '[{"name": "min-num-features", "value": "' + DIGITS + '"}]',
        '[{"name": "orthophoto-resolution", "value": ' + WRITTEN_OUT_1E400 + "}]",
        '[{"name": "orthophoto-resolution", "value": 1e400}]',
        '[{"name": "cameras", "value": ' + NESTED[:20_000] + NESTED[-20_000:] + "}]",
        "[" + ", ".join(['{"name": "dsm", "value": true}'] * 20_000) + "]",
    ],
    ids=["nested", "digits", "1e400-int", "digits-str", "1e400-float", "inf", "json", "huge"],
)
async def test_bad_options(target: Attack, options: str) -> None:
    for route in ("/task/new/init", "/task/new"):
        answer = await target.send(
            f"{route}?token={TOKEN}", "POST", data=form({"options": options}, files=2)
        )
        assert answer.status < 500, answer
        if "uuid" not in answer.json():  # a long list of good options is no error
            nodeodm_error(answer)


async def test_nested_and_huge_json_bodies(target: Attack) -> None:
    for body in (NESTED, '{"uuid": ' + DIGITS + "}", '{"uuid": "x", "options": ' + NESTED + "}"):
        for route in ("/task/cancel", "/task/remove", "/task/restart", "/commit"):
            answer = await target.send(
                f"{route}?token={TOKEN}",
                "POST",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            assert answer.status < 500 and "error" in answer.json(), (route, answer)


@pytest.mark.parametrize(
    "disposition",
    [
        "form-data; name=\"images\"; filename*=x-no-such-charset''a.jpg",
        "form-data; name=\"images\"; filename*=utf-8''%ED%A0%80.jpg",
        "form-data; name=\"images\"; filename*=utf-16''%FF.jpg",
        "form-data; name=\"images\"; filename*=utf-8''a%00b.jpg",
        "form-data; name=\"images\"; filename*=utf-8''..%2F..%2Fescape.jpg",
        "form-data; name=\"images\"; filename*=utf-8''" + "a" * 5000 + ".jpg",
        "form-data; name*=utf-8''%ED%A0%80; filename=a.jpg",
    ],
    ids=["charset", "surrogate", "utf16", "nul", "traversal", "long", "name"],
)
async def test_odd_file_names(target: Attack, disposition: str, tmp_path: Path) -> None:
    init = (await target.send(f"/task/new/init?token={TOKEN}", "POST", data=form({}))).json()
    uuid = init["uuid"]
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        f"Content-Type: image/jpeg\r\n\r\nxxxx\r\n--{boundary}--\r\n"
    ).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    for route in (f"/task/new/upload/{uuid}", "/task/new"):
        answer = await target.send(f"{route}?token={TOKEN}", "POST", data=body, headers=headers)
        assert answer.status < 500, answer
        if answer.status != 200 or "error" in answer.json():
            nodeodm_error(answer)
    assert not list(target.cluster.settings.data_dir.parent.glob("escape*"))


async def test_long_boundaries_gzip_and_odd_content_types(target: Attack) -> None:
    boundary = "b" * 300
    part = 'Content-Disposition: form-data; name="name"\r\n\r\nx'
    body = f"--{boundary}\r\n{part}\r\n--{boundary}--\r\n"
    for route in ("/task/new/init", "/task/new", "/task/cancel"):
        long_boundary = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        gzip = {"Content-Type": "multipart/form-data; boundary=x", "Content-Encoding": "gzip"}
        for headers in (long_boundary, gzip):
            answer = await target.send(
                f"{route}?token={TOKEN}", "POST", data=body.encode(), headers=headers
            )
            assert answer.status < 500, (route, headers, answer)
        gz_json = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        answer = await target.send(f"{route}?token={TOKEN}", "POST", data=b"{}", headers=gz_json)
        assert answer.status < 500, answer
    for route in ("/task/new/init", "/task/new", "/task/cancel", "/commit"):
        raw = (
            f"POST {route}?token={TOKEN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            "Content-Length: 2\r\n"
        ).encode() + b"Content-Type: multipart/form-data; boundary=\xff\xfe\r\n\r\n{}"
        status, _ = await target.send_raw(raw)
        assert status < 500


async def test_date_created_beyond_64_bits(target: Attack) -> None:
    for value in ("9" * 30, "-" + "9" * 30, DIGITS, "1e400", "²"):
        answer = await target.send(
            f"/task/new?token={TOKEN}", "POST", data=form({"dateCreated": value}, files=2)
        )
        assert answer.status == 200, answer
        uuid = answer.json()["uuid"]
        info = await target.send(f"/task/{uuid}/info?token={TOKEN}")
        assert info.status == 200 and isinstance(info.json()["dateCreated"], int), info


async def test_huge_numbers_in_queries(target: Attack) -> None:
    init = (await target.send(f"/task/new/init?token={TOKEN}", "POST", data=form({}))).json()
    uuid = init["uuid"]
    for value in (DIGITS, "²", "①", "1e400", "-" + DIGITS):
        for q in ("line", "with_output"):
            for what in ("info", "output"):
                query = f"token={TOKEN}&{q}={quote(value)}"
                answer = await target.send(f"/task/{uuid}/{what}?{query}")
                assert answer.status == 200, answer


async def test_long_static_paths(target: Attack) -> None:
    for path in ("/js/" + "a" * 3000 + ".js", "/" + "a/" * 1500 + "x.css", "/" + "x" * 3000):
        answer = await target.send(path)
        assert answer.status == 400 and nodeodm_error(answer), answer


async def test_malformed_http_is_one_line(target: Attack, caplog: pytest.LogCaptureFixture) -> None:
    for raw in (
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        status, _ = await target.send_raw(raw)
        assert status == 400
    lines = [r for r in caplog.records if r.getMessage().startswith("malformed HTTP request")]
    assert lines and all(r.levelno == logging.INFO and r.exc_info is None for r in lines)


async def test_a_node_listing_nested_json(caplog: pytest.LogCaptureFixture) -> None:
    """A node (a real server here) answering ``/task/list`` with JSON nested beyond what
    Python parses: NodeRejected, no traceback."""

    async def task_list(request: web.Request) -> web.Response:
        return web.Response(text=NESTED, content_type="application/json")

    app = web.Application()
    app.router.add_get("/task/list", task_list)
    async with serving(app) as port:
        client = NodeClient()
        await client.start()
        try:
            with pytest.raises(NodeRejected):
                await client.get_json(Node("127.0.0.1", port), paths.fixed("/task/list"))
        finally:
            await client.close()
    assert not tracebacks(caplog.records)


async def test_admin_web_numbers_and_bodies(
    target: Attack, caplog: pytest.LogCaptureFixture
) -> None:
    cluster: Cluster = target.cluster
    site = await cluster.add_site("admin-web", build_admin_app(AdminCommands(cluster.deps), ""), 0)
    base = f"http://127.0.0.1:{site.port}"
    counts: Counts = target.counts
    async with aiohttp.ClientSession() as s:

        async def go(method: str, path: str, **kw: Any) -> int:
            async with s.request(method, base + path, **kw) as r:
                body = await r.read()
                counts.requests += 1
                if r.status >= 500:
                    counts.server_errors += 1
                if r.status >= 400 and path.startswith("/r/"):
                    assert "error" in json.loads(body), body
                return r.status

        for value in ("²", "①", "٣", DIGITS, "1_000", "+1", "0x1", "1.0"):
            assert await go("GET", f"/r/tasks?limit={quote(value)}") == 400, value
            for route in ("/r/node/lock", "/r/node/unlock"):
                assert await go("POST", route, json={"number": value}) == 400, value
            assert await go("DELETE", "/r/node", json={"number": value}) == 400
            assert await go("POST", "/r/node/add", json={"hostname": "h", "port": value}) == 400
        for raw in (NESTED, '{"number": ' + DIGITS + "}"):
            headers = {"Content-Type": "application/json"}
            assert await go("POST", "/r/node/lock", data=raw, headers=headers) in (400, 413)
        assert await go("GET", "/static/" + "a" * 3000) in (400, 404)
        assert await go("GET", "/static/..%2F..%2Fweb.py") in (400, 403, 404)
