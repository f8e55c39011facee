"""``hetzner`` provider: Hetzner Cloud servers through hcloud (Hetzner's official client).

Servers carry the label ``clusterodm=<cluster tag>``; ``location`` may list several locations,
tried in turn. ``snapshot: true`` looks ``image`` up among snapshots by description, as the
original. hcloud runs in a thread with its own request timeout; its errors become CloudError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from clusterodm.autoscale.base import Machine, MachineSpec
from clusterodm.autoscale.config import AsrConfig
from clusterodm.errors import CloudError

LABEL = "clusterodm"
TIMEOUT_S = 20.0


class HetznerProvider:
    name = "hetzner"

    def __init__(self, config: AsrConfig) -> None:
        try:
            import hcloud
        except ImportError:
            raise CloudError(
                "the hetzner provider needs: pip install 'clusterodm[hetzner]'"
            ) from None
        self.config = config
        self._hcloud = hcloud
        self.client = hcloud.Client(
            token=str(config.get("apiToken")),
            api_endpoint=str(config.get("endpoint") or "https://api.hetzner.cloud/v1"),
            timeout=TIMEOUT_S,
            poll_interval=1.0,
        )

    async def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except self._hcloud.APIException as e:
            raise CloudError(f"Hetzner {what}: {e.code}: {e.message}") from None
        except Exception as e:  # requests' connection errors and timeouts
            raise CloudError(f"Hetzner {what}: {e}") from None

    async def start(self) -> None:
        await self._call("list servers", lambda: self.client.servers.get_all(label_selector=LABEL))

    def _image(self) -> Any:
        from hcloud.images import Image

        name = str(self.config.get("image"))
        if not self.config.get("snapshot"):
            return Image(name=name)
        for img in self.client.images.get_all(type=["snapshot"]):
            if img.description == name:
                return Image(id=img.id)
        raise CloudError(f"Snapshot {name} not found.")

    async def create(self, spec: MachineSpec) -> Machine:
        from hcloud.locations import Location
        from hcloud.server_types import ServerType
        from hcloud.ssh_keys import SSHKey

        def create() -> Any:
            keys = []
            fingerprint = self.config.get("sshKey.fingerprint")
            if fingerprint:
                key = self.client.ssh_keys.get_by_fingerprint(fingerprint)
                if key is None:
                    raise CloudError(f"SSH Key with fingerprint {fingerprint} not found.")
                keys.append(SSHKey(id=key.id))
            return self.client.servers.create(
                name=spec.name,
                server_type=ServerType(name=spec.size.slug),
                image=self._image(),
                location=Location(name=spec.region),
                ssh_keys=keys or None,
                user_data=spec.user_data,
                labels={LABEL: spec.cluster_tag},
            )

        answer = await self._call("create server", create)
        return Machine(str(answer.server.id), spec.name, spec.region, "", spec.port)

    async def locate(self, machine: Machine) -> Machine:
        server = await self._call(
            "get server", lambda: self.client.servers.get_by_id(int(machine.id))
        )
        ip = server.public_net.ipv4.ip if server.public_net and server.public_net.ipv4 else ""
        host = ip if server.status == "running" else ""
        return Machine(machine.id, machine.name, machine.region, host, machine.port)

    async def destroy(self, machine: Machine) -> None:
        from hcloud.servers import Server

        try:
            await self._call(
                "delete server", lambda: self.client.servers.delete(Server(id=int(machine.id)))
            )
        except CloudError as e:
            if "not_found" not in e.message:
                raise

    async def list_tagged(self, cluster_tag: str) -> list[Machine]:
        servers = await self._call(
            "list servers",
            lambda: self.client.servers.get_all(label_selector=f"{LABEL}={cluster_tag}"),
        )
        return [Machine(str(s.id), s.name, "") for s in servers]

    def describe(self, spec: MachineSpec) -> list[str]:
        return [
            f"hetzner server create: type {spec.size.slug}, image {self.config.get('image')}, "
            f"location {spec.region}, labels {LABEL}={spec.cluster_tag}"
        ]

    async def close(self) -> None:
        return None
