"""hetzner and digitalocean providers through their official SDKs, against a small fake of
just the API calls we make (shapes from the public API docs), served on loopback."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from clusterodm.autoscale import MachineSize, MachineSpec, parse_asr_config
from clusterodm.autoscale.digitalocean import DigitalOceanProvider
from clusterodm.autoscale.hetzner import HetznerProvider
from clusterodm.errors import CloudError

S3 = {"accessKey": "AK", "secretKey": "SK-secret", "endpoint": "s3.example", "bucket": "b"}
ids = itertools.count(100)


class FakeCloud:
    def __init__(self) -> None:
        self.servers: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.fail_create = 0

    # --- Hetzner Cloud: /v1/servers ---
    def hetzner_server(self, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": s["id"], "name": s["name"], "status": "running", "labels": s["labels"],
            "public_net": {"ipv4": {"id": 7, "ip": "127.0.0.1", "blocked": False, "dns_ptr": ""},
                           "ipv6": None, "floating_ips": [], "firewalls": []},
            "created": "2024-01-01T00:00:00+00:00",
        }  # fmt: skip

    async def h_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("POST", "/v1/servers", body))
        if self.fail_create:
            self.fail_create -= 1
            return web.json_response(
                {"error": {"code": "resource_unavailable", "message": "no capacity"}}, status=412
            )
        s = {"id": next(ids), "name": body["name"], "labels": body.get("labels", {}), **body}
        self.servers[s["id"]] = s
        action = {"id": 1, "command": "create_server", "status": "running", "progress": 0,
                  "started": "2024-01-01T00:00:00+00:00", "finished": None, "resources": [],
                  "error": None}  # fmt: skip
        return web.json_response(
            {"server": self.hetzner_server(s), "action": action, "next_actions": [],
             "root_password": None}, status=201,
        )  # fmt: skip

    async def h_list(self, request: web.Request) -> web.Response:
        sel = request.query.get("label_selector", "")
        key, _, value = sel.partition("=")
        found = [
            self.hetzner_server(s)
            for s in self.servers.values()
            if key in s["labels"] and (not value or s["labels"][key] == value)
        ]
        meta = {
            "pagination": {
                "page": 1,
                "per_page": 50,
                "previous_page": None,
                "next_page": None,
                "last_page": 1,
                "total_entries": len(found),
            }
        }
        return web.json_response({"servers": found, "meta": meta})  # fmt: skip

    async def h_get(self, request: web.Request) -> web.Response:
        s = self.servers.get(int(request.match_info["id"]))
        if s is None:
            return web.json_response(
                {"error": {"code": "not_found", "message": "nope"}}, status=404
            )
        return web.json_response({"server": self.hetzner_server(s)})

    async def h_delete(self, request: web.Request) -> web.Response:
        if self.servers.pop(int(request.match_info["id"]), None) is None:
            return web.json_response(
                {"error": {"code": "not_found", "message": "nope"}}, status=404
            )
        return web.json_response({"action": {"id": 2, "command": "delete_server",
                                             "status": "success", "progress": 100,
                                             "started": None, "finished": None,
                                             "resources": [], "error": None}})  # fmt: skip

    # --- DigitalOcean: /v2/droplets ---
    def droplet(self, s: dict[str, Any]) -> dict[str, Any]:
        return {"id": s["id"], "name": s["name"], "status": "active", "tags": s["tags"],
                "networks": {"v4": [{"ip_address": "127.0.0.1", "type": "public"}]}}  # fmt: skip

    async def d_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("POST", "/v2/droplets", body))
        if request.headers.get("Authorization") != "Bearer do-token-123":
            return web.json_response({"id": "unauthorized", "message": "bad token"}, status=401)
        s = {"id": next(ids), **body}
        self.servers[s["id"]] = s
        return web.json_response({"droplet": self.droplet(s)}, status=202)

    async def d_list(self, request: web.Request) -> web.Response:
        tag = request.query.get("tag_name")
        found = [self.droplet(s) for s in self.servers.values() if tag in s.get("tags", [])]
        return web.json_response({"droplets": found, "links": {}, "meta": {"total": len(found)}})

    async def d_get(self, request: web.Request) -> web.Response:
        s = self.servers.get(int(request.match_info["id"]))
        if s is None:
            return web.json_response({"id": "not_found", "message": "nope"}, status=404)
        return web.json_response({"droplet": self.droplet(s)})

    async def d_delete(self, request: web.Request) -> web.Response:
        if self.servers.pop(int(request.match_info["id"]), None) is None:
            return web.json_response({"id": "not_found", "message": "nope"}, status=404)
        return web.Response(status=204)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeCloud, str]]:
    cloud = FakeCloud()
    app = web.Application()
    app.router.add_post("/v1/servers", cloud.h_create)
    app.router.add_get("/v1/servers", cloud.h_list)
    app.router.add_get("/v1/servers/{id}", cloud.h_get)
    app.router.add_delete("/v1/servers/{id}", cloud.h_delete)
    app.router.add_post("/v2/droplets", cloud.d_create)
    app.router.add_get("/v2/droplets", cloud.d_list)
    app.router.add_get("/v2/droplets/{id}", cloud.d_get)
    app.router.add_delete("/v2/droplets/{id}", cloud.d_delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield cloud, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def spec(region: str, tag: str = "tag-1") -> MachineSpec:
    return MachineSpec("clusterodm-2-x", MachineSize(5, "cx22"), region, "tok", "http://p/commit",
                       "#!/bin/bash\n", tag)  # fmt: skip


async def test_hetzner(fake: tuple[FakeCloud, str]) -> None:
    cloud, url = fake
    config = parse_asr_config(
        {"provider": "hetzner", "apiToken": "h-token", "endpoint": f"{url}/v1", "s3": S3,
         "location": ["fsn1", "nbg1"]}
    )  # fmt: skip
    provider = HetznerProvider(config)
    await provider.start()
    m = await provider.create(spec(config.region_for(2)))
    body = cloud.requests[-1][2]
    assert body["location"] == "nbg1" and body["server_type"] == "cx22"
    assert body["labels"] == {"clusterodm": "tag-1"} and body["user_data"].startswith("#!")
    assert (await provider.locate(m)).host == "127.0.0.1"
    assert [x.id for x in await provider.list_tagged("tag-1")] == [m.id]
    assert await provider.list_tagged("tag-2") == []
    cloud.fail_create = 1
    with pytest.raises(CloudError, match="resource_unavailable"):
        await provider.create(spec("fsn1"))
    await provider.destroy(m)
    await provider.destroy(m)  # already gone: fine
    assert cloud.servers == {}


async def test_digitalocean(fake: tuple[FakeCloud, str]) -> None:
    cloud, url = fake
    raw = {"provider": "digitalocean", "accessToken": "do-token-123", "endpoint": url, "s3": S3}
    provider = DigitalOceanProvider(parse_asr_config(raw))
    m = await provider.create(spec("nyc3"))
    body = cloud.requests[-1][2]
    assert body["region"] == "nyc3" and "tag-1" in body["tags"] and body["user_data"]
    assert (await provider.locate(m)).host == "127.0.0.1"
    assert [x.id for x in await provider.list_tagged("tag-1")] == [m.id]
    await provider.destroy(m)
    await provider.destroy(m)
    assert await provider.list_tagged("tag-1") == []
    bad = DigitalOceanProvider(parse_asr_config({**raw, "accessToken": "wrong"}))
    with pytest.raises(CloudError, match="create droplet"):
        await bad.create(spec("nyc3"))
