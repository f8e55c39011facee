"""scaleway provider through the official SDK, against a small fake of the Instance API calls we
make (paths, bodies and answers as in Scaleway's public Instance API v1 docs), on loopback."""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from clusterodm.autoscale import (
    Autoscaler,
    MachineSize,
    MachineSpec,
    make_provider,
    parse_asr_config,
)
from clusterodm.autoscale import scaleway as scw
from clusterodm.autoscale.scaleway import ScalewayProvider
from clusterodm.errors import CloudError

ORG = "11111111-2222-4333-8444-555555555555"
SECRET = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
S3 = {"accessKey": "S3AK", "secretKey": "s3-secret-value", "endpoint": "s3.fr-par.scw.cloud",
      "bucket": "results"}  # fmt: skip
BASE = "/instance/v1/zones/{zone}"


def error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"type": kind, "message": message}, status=status)


class FakeInstanceApi:
    """Servers and volumes per zone; each server is created stopped, as the API does."""

    def __init__(self) -> None:
        self.servers: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.user_data: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.out_of_stock: set[str] = set()  # zones refusing new servers
        self.refuse_poweron = False
        self.hang = asyncio.Event()  # set: GET server hangs until released
        self.release = asyncio.Event()

    def view(self, s: dict[str, Any]) -> dict[str, Any]:
        running = s["state"] == "running"
        ip = {"id": "ip-1", "address": "127.0.0.1", "gateway": "62.210.0.1", "netmask": "32",
              "family": "inet", "dynamic": True, "provisioning_mode": "dhcp", "tags": [],
              "state": "attached", "ipam_id": ""}  # fmt: skip
        return {
            "id": s["id"], "name": s["name"], "organization": s["project"],
            "project": s["project"], "tags": s["tags"], "commercial_type": s["commercial_type"],
            "state": s["state"], "state_detail": "", "zone": s["zone"], "hostname": s["name"],
            "dynamic_ip_required": True, "protected": False, "arch": "x86_64",
            "allowed_actions": ["terminate"] if running else ["poweron", "backup"],
            "public_ip": ip if running else None, "public_ips": [ip] if running else [],
            "image": {"id": "img-1", "name": s["image"]},
            "volumes": {"0": {"id": s["volume"], "name": "root", "volume_type": "l_ssd",
                              "size": 20_000_000_000, "state": "available", "zone": s["zone"],
                              "boot": False}},
            "creation_date": "2024-01-01T00:00:00+00:00",
        }  # fmt: skip

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("X-Auth-Token") == SECRET

    def _server(self, request: web.Request) -> dict[str, Any] | None:
        s = self.servers.get(request.match_info["id"])
        return s if s is not None and s["zone"] == request.match_info["zone"] else None

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("POST", request.path, body))
        if not self._authorized(request):
            return error(401, "denied_authentication", "authentication is denied")
        zone = request.match_info["zone"]
        if zone in self.out_of_stock:
            return error(412, "out_of_stock", f"{body['commercial_type']} is out of stock")
        volume = str(uuidlib.uuid4())
        self.volumes[volume] = {"zone": zone}
        s = {"id": str(uuidlib.uuid4()), "state": "stopped", "zone": zone, "volume": volume,
             "tags": body.get("tags", []), **body}  # fmt: skip
        self.servers[s["id"]] = s
        return web.json_response({"server": self.view(s)}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.path, dict(request.query)))
        if not self._authorized(request):
            return error(401, "denied_authentication", "authentication is denied")
        wanted = [t for t in request.query.get("tags", "").split(",") if t]
        project = request.query.get("project")
        found = [
            self.view(s)
            for s in self.servers.values()
            if s["zone"] == request.match_info["zone"]
            and all(t in s["tags"] for t in wanted)
            and (project is None or s["project"] == project)
        ]
        page, per_page = int(request.query.get("page", 1)), int(request.query.get("per_page", 50))
        chunk = found[(page - 1) * per_page : page * per_page]
        return web.json_response({"servers": chunk}, headers={"X-Total-Count": str(len(found))})

    async def get(self, request: web.Request) -> web.Response:
        if self.hang.is_set():
            await self.release.wait()
        s = self._server(request)
        if s is None:
            return error(404, "not_found", "resource is not found")
        answer = self.view(s)
        if s["state"] == "starting":
            s["state"] = "running"  # booted by the next look
        return web.json_response({"server": answer})

    async def set_user_data(self, request: web.Request) -> web.Response:
        s = self._server(request)
        if s is None:
            return error(404, "not_found", "resource is not found")
        content = await request.read()
        self.user_data[(s["id"], request.match_info["key"])] = (request.content_type, content)
        return web.Response(status=204)

    async def action(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("POST", request.path, body))
        s = self._server(request)
        if s is None:
            return error(404, "not_found", "resource is not found")
        task = {"id": str(uuidlib.uuid4()), "description": body["action"], "status": "pending",
                "href_from": request.path, "progress": 0, "zone": s["zone"]}  # fmt: skip
        if body["action"] == "poweron" and s["state"] == "stopped" and not self.refuse_poweron:
            s["state"] = "starting"
        elif body["action"] == "terminate" and s["state"] != "stopped":
            del self.servers[s["id"]]
            self.volumes.pop(s["volume"], None)  # terminate removes local volumes
        else:
            return error(400, "invalid_request_error", f"{body['action']} is not allowed")
        return web.json_response({"task": task}, status=202)

    async def delete(self, request: web.Request) -> web.Response:
        self.requests.append(("DELETE", request.path, None))
        s = self._server(request)
        if s is None:
            return error(404, "not_found", "resource is not found")
        if s["state"] != "stopped":
            return error(400, "invalid_request_error", "instance should be powered off")
        del self.servers[s["id"]]  # its volumes stay, as the API does
        return web.Response(status=204)

    async def delete_volume(self, request: web.Request) -> web.Response:
        self.requests.append(("DELETE", request.path, None))
        if self.volumes.pop(request.match_info["id"], None) is None:
            return error(404, "not_found", "resource is not found")
        return web.Response(status=204)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeInstanceApi, str]]:
    api = FakeInstanceApi()
    app = web.Application()
    servers, one = BASE + "/servers", BASE + "/servers/{id}"
    app.router.add_post(servers, api.create)
    app.router.add_get(servers, api.list)
    app.router.add_get(one, api.get)
    app.router.add_delete(one, api.delete)
    app.router.add_patch(one + "/user_data/{key}", api.set_user_data)
    app.router.add_post(one + "/action", api.action)
    app.router.add_delete(BASE + "/volumes/{id}", api.delete_volume)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield api, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    api.release.set()
    await runner.cleanup()


def config(url: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "scaleway", "organization": ORG, "secretToken": SECRET, "endpoint": url,
            "s3": S3, "region": ["fr-par-1", "nl-ams-1"], "image": "ubuntu_jammy",
            "tags": ["clusterodm", "mapping"], **extra}  # fmt: skip


def spec(zone: str, tag: str = "tag-1") -> MachineSpec:
    return MachineSpec("clusterodm-3-ab12", MachineSize(5, "DEV1-S"), zone, "node-tok",
                       "http://proxy/commit", "#!/bin/bash\necho hi\n", tag)  # fmt: skip


async def test_lifecycle_create_locate_list_destroy(fake: tuple[FakeInstanceApi, str]) -> None:
    api, url = fake
    cfg = parse_asr_config(config(url))
    provider = make_provider(cfg)
    assert isinstance(provider, ScalewayProvider)
    await provider.start()
    m = await provider.create(spec(cfg.region_for(2)))
    assert m.region == "nl-ams-1" and m.host == ""
    created = [r for r in api.requests if r[0] == "POST" and r[1].endswith("/servers")][-1]
    assert created[1] == "/instance/v1/zones/nl-ams-1/servers"
    body = created[2]
    assert body["commercial_type"] == "DEV1-S" and body["image"] == "ubuntu_jammy"
    assert body["name"] == "clusterodm-3-ab12" and body["project"] == ORG
    assert body["tags"] == ["tag-1", "clusterodm", "mapping"]
    assert body["dynamic_ip_required"] is True
    assert api.user_data[(m.id, "cloud-init")] == ("text/plain", b"#!/bin/bash\necho hi\n")
    actions = [r[2]["action"] for r in api.requests if r[1].endswith("/action")]
    assert actions == ["poweron"]
    # starting: no address yet; running: its public IPv4
    assert (await provider.locate(m)).host == ""
    assert (await provider.locate(m)).host == "127.0.0.1"
    listed = await provider.list_tagged("tag-1")
    assert [(x.id, x.region) for x in listed] == [(m.id, "nl-ams-1")]
    assert await provider.list_tagged("tag-2") == []
    await provider.destroy(m)
    assert [r[2]["action"] for r in api.requests if r[1].endswith("/action")][-1] == "terminate"
    assert api.servers == {} and api.volumes == {}
    await provider.destroy(m)  # already gone: fine
    with pytest.raises(CloudError, match="not_found"):
        await provider.locate(m)
    await provider.close()


async def test_list_pages_through_every_zone(
    fake: tuple[FakeInstanceApi, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, url = fake
    provider = ScalewayProvider(parse_asr_config(config(url)))
    for i in range(5):
        api.servers[f"id-{i}"] = {"id": f"id-{i}", "name": f"m{i}", "state": "running",
                                  "zone": "fr-par-1" if i < 3 else "nl-ams-1", "project": ORG,
                                  "tags": ["tag-1"], "commercial_type": "DEV1-S",
                                  "image": "x", "volume": f"v{i}"}  # fmt: skip
    api.servers["other"] = {**api.servers["id-0"], "id": "other", "tags": ["clusterodm"]}
    api.servers["foreign"] = {**api.servers["id-0"], "id": "foreign", "project": SECRET}
    monkeypatch.setattr(scw, "PAGE_SIZE", 2)
    found = await provider.list_tagged("tag-1")
    assert sorted(m.id for m in found) == [f"id-{i}" for i in range(5)]
    pages = [r[2]["page"] for r in api.requests if r[0] == "GET" and "fr-par-1" in r[1]]
    assert pages == ["1", "2"]


async def test_refusals_become_cloud_errors(fake: tuple[FakeInstanceApi, str]) -> None:
    api, url = fake
    bad = ScalewayProvider(parse_asr_config(config(url, secretToken=ORG)))
    with pytest.raises(CloudError, match="HTTP 401 denied_authentication"):
        await bad.start()
    provider = ScalewayProvider(parse_asr_config(config(url)))
    api.out_of_stock.add("fr-par-1")
    with pytest.raises(CloudError, match="create server: HTTP 412 out_of_stock"):
        await provider.create(spec("fr-par-1"))
    # power-on refused: the stopped server is deleted with its volume, nothing is left
    api.refuse_poweron = True
    with pytest.raises(CloudError, match="power on: HTTP 400"):
        await provider.create(spec("nl-ams-1"))
    assert api.servers == {} and api.volumes == {}
    assert [r[0] for r in api.requests[-2:]] == ["DELETE", "DELETE"]


async def test_unreachable_and_slow_api_are_bounded(
    fake: tuple[FakeInstanceApi, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, url = fake
    provider = ScalewayProvider(parse_asr_config(config(url)))
    m = await provider.create(spec("fr-par-1"))
    monkeypatch.setattr(scw, "READ_TIMEOUT_S", 0.2)
    api.hang.set()
    with pytest.raises(CloudError, match="get server: ReadTimeout"):
        await provider.locate(m)
    monkeypatch.setattr(scw, "CALL_TIMEOUT_S", 0.1)
    monkeypatch.setattr(scw, "READ_TIMEOUT_S", 5.0)
    with pytest.raises(CloudError, match=r"no answer in 0\.1 s"):
        await provider.locate(m)
    closed = ScalewayProvider(parse_asr_config(config("http://127.0.0.1:9")))
    with pytest.raises(CloudError, match="list servers: ConnectionError"):
        await closed.list_tagged("tag-1")


async def test_view_command_masks_secrets(fake: tuple[FakeInstanceApi, str]) -> None:
    _, url = fake
    cfg = parse_asr_config(config(url, clusterTag="tag-1", region="par1"))
    assert cfg.regions == ("fr-par-1",)  # the original's zone name
    provider = ScalewayProvider(cfg)
    asr = Autoscaler(cfg, provider, None, None, None, None, None, lambda: "http://proxy:3000")  # type: ignore[arg-type]
    text = asr.view_command(3)
    assert "scaleway server create: type GP1-XS, image ubuntu_jammy, zone fr-par-1" in text
    assert "tags ['tag-1', 'clusterodm', 'mapping']" in text
    assert "--webhook http://proxy:3000/commit" in text
    assert SECRET not in text and "s3-secret-value" not in text
    assert "--s3_secret_key '***'" in text or "--s3_secret_key ***" in text
