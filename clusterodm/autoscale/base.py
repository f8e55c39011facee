"""What the autoscaler asks of a machine provider: the ``CloudProvider`` seam and its values.

A provider creates one machine from a ``MachineSpec``, tells where its node listens once known
(``locate``), destroys it by id, and lists the machines carrying the cluster's tag so machines
nobody remembers can be destroyed. Providers translate their SDK's errors into ``CloudError``;
blocking SDK calls run in a thread (``asyncio.to_thread``) with the SDK's own timeouts set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

NODE_PORT = 3000
"""NodeODM's port on cloud machines (the container publishes it there)."""


@dataclass(frozen=True, slots=True)
class MachineSize:
    """One row of ``imageSizeMapping``: the smallest machine able to process ``max_images``."""

    max_images: int
    slug: str
    storage_gb: int | None = None
    spot_price: float | None = None


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """Everything needed to create one machine."""

    name: str
    size: MachineSize
    region: str
    token: str  # the node token of the NodeODM it will run
    webhook: str  # where the node reports finished tasks
    user_data: str  # cloud-init script (cloud providers; unused by local and slurm)
    cluster_tag: str  # every machine of this cluster carries it
    port: int = NODE_PORT


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine as the provider knows it. ``host`` is empty until the provider assigns one."""

    id: str
    name: str
    region: str = ""
    host: str = ""
    port: int = NODE_PORT
    extra: dict[str, str] = field(default_factory=dict, compare=False)


class CloudProvider(Protocol):
    """A place machines come from: a cloud, this machine's processes, or a Slurm cluster."""

    name: str

    async def start(self) -> None:
        """Check credentials and settings at start-up; raise CloudError."""

    async def create(self, spec: MachineSpec) -> Machine:
        """Ask for a machine; return at once (it boots on its own). CloudError on refusal."""

    async def locate(self, machine: Machine) -> Machine:
        """The machine with its address filled in once known; CloudError if it is gone."""

    async def destroy(self, machine: Machine) -> None:
        """Destroy the machine; a machine already gone is not an error."""

    async def list_tagged(self, cluster_tag: str) -> list[Machine]:
        """Machines of this provider that carry ``cluster_tag``."""

    def describe(self, spec: MachineSpec) -> list[str]:
        """Lines saying what ``create(spec)`` would ask for (no secrets)."""

    async def close(self) -> None: ...
