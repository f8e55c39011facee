"""``scaleway`` provider: Scaleway Instances through the official ``scaleway`` SDK.

A machine is made in three Instance API calls: create the server (commercial type from
``imageSizeMapping``, ``image`` label or id, the zone, tags = the cluster tag and the config's
``tags``, a dynamic public IP), set its user data (``PATCH .../user_data/cloud-init``,
``text/plain``), power it on (``action: poweron``). Its host is its public IPv4 once ``running``.
Destroying uses the ``terminate`` action (the server and its local volumes go); a server that is
stopped cannot be terminated, so it is deleted and its volumes after it. Orphans are found by
listing each configured zone's servers with the cluster tag, in the configured project.

``region`` holds zones (``fr-par-1``); the original's names ``par1`` and ``ams1`` are read as
``fr-par-1`` and ``nl-ams-1``. ``organization`` is the project too unless ``project`` is set
(Scaleway's default project has the organization's id). ``accessKey`` is optional: the API
authenticates with the secret key alone.

Timeouts: the SDK sends every request through ``requests.request`` with no timeout and has no
session to configure, so our API class overrides the SDK's low-level ``_request`` to send the
same request through its own ``requests.Session`` with connect/read timeouts; on top of that
each call (a few requests at most) is bounded by ``asyncio.wait_for`` around the thread.
SDK, HTTP and unmarshalling errors become ``CloudError`` in ``_call``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import partial
from typing import Any

from clusterodm.autoscale.base import Machine, MachineSpec
from clusterodm.autoscale.config import AsrConfig
from clusterodm.errors import CloudError

API_URL = "https://api.scaleway.com"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 120.0  # the longest call (create) sends three requests
PAGE_SIZE = 100
USER_DATA_KEY = "cloud-init"


class _NotFound(CloudError):
    """The API answered 404: the server (or volume) does not exist."""


def _sdk() -> tuple[Any, Any, type[Exception]]:
    try:
        import requests
        from scaleway import Client
        from scaleway.instance.v1.custom_api import InstanceUtilsV1API
        from scaleway_core.api import ScalewayException
    except ImportError:
        needs = "the scaleway provider needs: pip install 'clusterodm[scaleway]'"
        raise CloudError(needs) from None

    class TimedInstanceAPI(InstanceUtilsV1API):
        """The SDK's Instance API with its requests sent through a session with timeouts."""

        def __init__(self, client: Any) -> None:
            super().__init__(client, bypass_validation=True)
            self.session = requests.Session()

        def _request(
            self,
            method: str,
            path: str,
            params: Any = None,
            headers: dict[str, str] | None = None,
            body: Any = None,
        ) -> Any:
            method = method.upper()
            sent = {"accept": "application/json", "user-agent": self.client.user_agent}
            if method in ("POST", "PUT", "PATCH"):
                sent["Content-Type"] = "application/json; charset=utf-8"
            sent.update(headers or {})
            if self.client.secret_key is not None:
                sent["x-auth-token"] = self.client.secret_key
            query: list[tuple[str, Any]] = []
            for key, value in (params or {}).items():
                if isinstance(value, list):
                    query += [(key, v) for v in value]
                elif value is not None:
                    query.append((key, value))
            data = body if isinstance(body, bytes) else json.dumps({} if body is None else body)
            res = self.session.request(
                method,
                f"{self.client.api_url}{path}",
                params=query,
                headers=sent,
                data=data,
                verify=not self.client.api_allow_insecure,
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            )
            total = res.headers.get("x-total-count")
            if total and res.ok:  # the SDK's list answers read it from the body
                res._content = json.dumps({**res.json(), "total_count": int(total)}).encode()
            return res

    return Client, TimedInstanceAPI, ScalewayException


def _error_text(e: Exception) -> str:
    response = getattr(e, "response", None)
    if response is None:
        return str(e) or type(e).__name__
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    kind, message = body.get("type", ""), body.get("message", "") or response.text[:200]
    return f"HTTP {response.status_code}" + (f" {kind}" if kind else "") + f": {message}"


def _public_ipv4(server: Any) -> str:
    """``public_ip`` (older API answers) or the first IPv4 of ``public_ips``."""
    candidates = [getattr(server, "public_ip", None), *(getattr(server, "public_ips", None) or [])]
    for ip in candidates:
        if ip is not None and ip.address and str(ip.family or "inet") == "inet":
            return str(ip.address)
    return ""


class ScalewayProvider:
    name = "scaleway"

    def __init__(self, config: AsrConfig) -> None:
        client_cls, api_cls, self._errors = _sdk()
        self.config = config
        self.project = str(config.get("project") or config.get("organization"))
        zone = config.regions[0]
        self.client = client_cls(
            access_key=str(config.get("accessKey") or "") or None,
            secret_key=str(config.get("secretToken")),
            default_project_id=self.project,
            default_zone=zone,
            default_region=zone.rsplit("-", 1)[0],
            api_url=str(config.get("endpoint") or API_URL).rstrip("/"),
        )
        self.api = api_cls(self.client)

    async def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), CALL_TIMEOUT_S)
        except CloudError:
            raise
        except (TimeoutError, asyncio.TimeoutError):
            raise CloudError(f"Scaleway {what}: no answer in {CALL_TIMEOUT_S:g} s") from None
        except self._errors as e:
            kind = _NotFound if getattr(e, "status_code", None) == 404 else CloudError
            raise kind(f"Scaleway {what}: {_error_text(e)}") from None
        except Exception as e:  # requests' connection errors and timeouts, odd answers
            raise CloudError(f"Scaleway {what}: {type(e).__name__}: {e}") from None

    def _tags(self, spec: MachineSpec) -> list[str]:
        extra = [str(t) for t in self.config.get("tags", []) or [] if str(t) != spec.cluster_tag]
        return [spec.cluster_tag, *extra]

    def create_args(self, spec: MachineSpec) -> dict[str, Any]:
        """The keyword arguments of the SDK's ``create_server`` for ``spec``."""
        return {
            "zone": spec.region,
            "name": spec.name,
            "commercial_type": spec.size.slug,
            "image": str(self.config.get("image")),
            "project": self.project,
            "tags": self._tags(spec),
            "dynamic_ip_required": True,
        }

    async def start(self) -> None:
        await self._call(
            "list servers", lambda: self.api.list_servers(zone=self.config.regions[0], per_page=1)
        )

    async def create(self, spec: MachineSpec) -> Machine:
        answer = await self._call(
            "create server", lambda: self.api.create_server(**self.create_args(spec))
        )
        server_id = str(answer.server.id)
        machine = Machine(server_id, spec.name, spec.region, "", spec.port)
        try:
            await self._call(
                "set user data",
                lambda: self.api.set_server_user_data(
                    server_id=server_id,
                    key=USER_DATA_KEY,
                    content=spec.user_data.encode(),
                    zone=spec.region,
                ),
            )
            await self._call(
                "power on",
                lambda: self.api.server_action(
                    server_id=server_id, zone=spec.region, action="poweron"
                ),
            )
        except CloudError:
            try:
                await self.destroy(machine)  # it never booted: nothing of it is kept
            except CloudError:
                pass  # the orphan sweep finds it by its tag
            raise
        return machine

    async def _server(self, machine: Machine) -> Any:
        answer = await self._call(
            "get server",
            lambda: self.api.get_server(server_id=machine.id, zone=self._zone(machine)),
        )
        return answer.server

    def _zone(self, machine: Machine) -> str:
        return machine.region or self.config.regions[0]

    async def locate(self, machine: Machine) -> Machine:
        server = await self._server(machine)  # _NotFound is a CloudError: the machine is gone
        host = _public_ipv4(server) if str(server.state) == "running" else ""
        return Machine(machine.id, machine.name, machine.region, host, machine.port)

    async def destroy(self, machine: Machine) -> None:
        zone = self._zone(machine)
        try:
            server = await self._server(machine)
            state = str(server.state)
            if state == "stopping":
                return  # being terminated already (or stopped: the orphan sweep deletes it then)
            if state != "stopped":
                await self._call(
                    "terminate server",
                    lambda: self.api.server_action(
                        server_id=machine.id, zone=zone, action="terminate"
                    ),
                )
                return
            volumes = [v.id for v in (server.volumes or {}).values() if v is not None]
            await self._call(
                "delete server", lambda: self.api.delete_server(server_id=machine.id, zone=zone)
            )
        except _NotFound:
            return
        for volume_id in volumes:
            try:
                await self._call(
                    "delete volume", partial(self.api.delete_volume, volume_id=volume_id, zone=zone)
                )
            except _NotFound:
                pass

    async def list_tagged(self, cluster_tag: str) -> list[Machine]:
        found: list[Machine] = []
        for zone in dict.fromkeys(self.config.regions):
            page = 1
            while True:
                fetch = partial(
                    self.api.list_servers,
                    zone=zone,
                    tags=[cluster_tag],
                    page=page,
                    per_page=PAGE_SIZE,
                )
                answer = await self._call("list servers", fetch)
                servers = list(answer.servers or [])
                found += [
                    Machine(str(s.id), str(s.name), zone)
                    for s in servers
                    if cluster_tag in (s.tags or [])
                ]
                if len(servers) < PAGE_SIZE or page * PAGE_SIZE >= int(answer.total_count or 0):
                    break
                page += 1
        return found

    def describe(self, spec: MachineSpec) -> list[str]:
        return [
            f"scaleway server create: type {spec.size.slug}, image {self.config.get('image')}, "
            f"zone {spec.region}, project {self.project}, tags {self._tags(spec)}",
            f"then: user data {USER_DATA_KEY} set, action poweron",
        ]

    async def close(self) -> None:
        self.api.session.close()
