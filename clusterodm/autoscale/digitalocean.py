"""``digitalocean`` provider: droplets through pydo (DigitalOcean's official client).

Droplets carry the cluster tag and the config's ``tags``; ``snapshot: true`` finds ``image``
among private images by name (moving to a region the snapshot is in, as the original). pydo
runs in a thread with its own timeout and no retries; its errors become CloudError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from clusterodm.autoscale.base import Machine, MachineSpec
from clusterodm.autoscale.config import AsrConfig
from clusterodm.errors import CloudError

TIMEOUT_S = 20


class DigitalOceanProvider:
    name = "digitalocean"

    def __init__(self, config: AsrConfig) -> None:
        try:
            import pydo
            from azure.core.exceptions import AzureError
        except ImportError:
            needs = "the digitalocean provider needs: pip install 'clusterodm[digitalocean]'"
            raise CloudError(needs) from None
        self.config = config
        self._errors = AzureError
        kwargs: dict[str, Any] = {"timeout": TIMEOUT_S, "retry_total": 0}
        endpoint = str(config.get("endpoint") or "")
        if endpoint:
            kwargs["endpoint"] = endpoint
        if endpoint.startswith("http://"):  # a local API (tests): bearer over plain http
            from azure.core.credentials import AzureKeyCredential
            from azure.core.pipeline.policies import AzureKeyCredentialPolicy

            kwargs["authentication_policy"] = AzureKeyCredentialPolicy(
                AzureKeyCredential(str(config.get("accessToken"))), "Authorization", prefix="Bearer"
            )
        self.client = pydo.Client(token=str(config.get("accessToken")), **kwargs)

    async def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except self._errors as e:
            raise CloudError(f"DigitalOcean {what}: {e}") from None

    async def start(self) -> None:
        await self._call("list droplets", lambda: self.client.droplets.list(per_page=1))

    def _tags(self, spec: MachineSpec) -> list[str]:
        return [spec.cluster_tag, *(str(t) for t in self.config.get("tags", []) or [])]

    async def _image(self, region: str) -> tuple[Any, str]:
        name = str(self.config.get("image"))
        if not self.config.get("snapshot"):
            return name, region
        answer = await self._call("list images", lambda: self.client.images.list(private=True))
        for img in answer.get("images", []):
            if img.get("name") == name:
                regions = img.get("regions") or []
                if not regions:
                    raise CloudError("Snapshot found, but not available in any region.")
                return img["id"], region if region in regions else regions[0]
        raise CloudError(f"Snapshot {name} not found.")

    async def create(self, spec: MachineSpec) -> Machine:
        image, region = await self._image(spec.region)
        body: dict[str, Any] = {
            "name": spec.name,
            "region": region,
            "size": spec.size.slug,
            "image": image,
            "user_data": spec.user_data,
            "tags": self._tags(spec),
            "monitoring": bool(self.config.get("monitoring")),
        }
        if self.config.get("sshKey.fingerprint"):
            body["ssh_keys"] = [self.config.get("sshKey.fingerprint")]
        answer = await self._call("create droplet", lambda: self.client.droplets.create(body=body))
        droplet = answer["droplet"]
        return Machine(str(droplet["id"]), spec.name, region, "", spec.port)

    async def locate(self, machine: Machine) -> Machine:
        answer = await self._call("get droplet", lambda: self.client.droplets.get(int(machine.id)))
        droplet = answer["droplet"]
        host = ""
        if droplet.get("status") == "active":
            for net in droplet.get("networks", {}).get("v4", []):
                if net.get("type") == "public":
                    host = net["ip_address"]
        return Machine(machine.id, machine.name, machine.region, host, machine.port)

    async def destroy(self, machine: Machine) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            await asyncio.to_thread(self.client.droplets.destroy, int(machine.id))
        except ResourceNotFoundError:
            return
        except self._errors as e:
            raise CloudError(f"DigitalOcean destroy droplet: {e}") from None

    async def list_tagged(self, cluster_tag: str) -> list[Machine]:
        answer = await self._call(
            "list droplets", lambda: self.client.droplets.list(tag_name=cluster_tag, per_page=200)
        )
        return [Machine(str(d["id"]), d.get("name", ""), "") for d in answer.get("droplets", [])]

    def describe(self, spec: MachineSpec) -> list[str]:
        return [
            f"droplet create: size {spec.size.slug}, image {self.config.get('image')}, "
            f"region {spec.region}, tags {self._tags(spec)}"
        ]

    async def close(self) -> None:
        return None
