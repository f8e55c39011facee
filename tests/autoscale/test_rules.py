"""The autoscaler's rules with an in-memory provider, node client and store: no I/O, and an
injected clock for the vacuum."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from clusterodm.autoscale import Autoscaler, Machine, MachineSpec, parse_asr_config, vacuum_reason
from clusterodm.autoscale.autoscaler import OFFLINE_MSG, PENDING_KEY, TAG_KEY, Reservation
from clusterodm.errors import CloudError, NodeUnreachable
from clusterodm.model import Node, NodeInfo, Route, TaskEntry, TaskStage
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable
from tests.helpers import eventually

TAG = "tag-A"
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    """The parts of the Store protocol the autoscaler, registry, routes and table use."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.routes: dict[str, Route] = {}
        self.tasks: dict[str, TaskEntry] = {}
        self.meta: dict[str, str] = {}

    async def list_nodes(self) -> list[Node]:
        return list(self.nodes)

    async def put_node(self, node: Node) -> None:
        keys = [n.key for n in self.nodes]
        if node.key in keys:
            self.nodes[keys.index(node.key)] = node
        else:
            self.nodes.append(node)

    async def delete_node(self, key: str) -> None:
        self.nodes = [n for n in self.nodes if n.key != key]
        self.routes = {u: r for u, r in self.routes.items() if r.node_key != key}

    async def put_route(self, route: Route) -> None:
        self.routes[route.uuid] = route

    async def delete_route(self, uuid: str) -> None:
        self.routes.pop(uuid, None)

    async def put_task(self, task: TaskEntry) -> None:
        self.tasks[task.uuid] = task

    async def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self.meta[key] = value


class FakeProvider:
    """Machines in a dict; each gets its own host. ``fail_regions`` refuse to create."""

    name = "fake"

    def __init__(self) -> None:
        self.machines: dict[str, tuple[Machine, str | None]] = {}  # id -> (machine, tag)
        self.created: list[MachineSpec] = []
        self.destroyed: list[str] = []
        self.fail_regions: set[str] = set()
        self.hold_locate: asyncio.Event | None = None  # set: locate waits for it
        self.started = False
        self._n = 0

    def add(self, machine_id: str, tag: str | None) -> None:
        self.machines[machine_id] = (Machine(machine_id, f"name-{machine_id}"), tag)

    async def start(self) -> None:
        self.started = True

    async def create(self, spec: MachineSpec) -> Machine:
        self.created.append(spec)
        if spec.region in self.fail_regions:
            raise CloudError(f"no capacity in {spec.region}")
        self._n += 1
        m = Machine(f"m{self._n}", spec.name, spec.region, "", spec.port)
        self.machines[m.id] = (m, spec.cluster_tag)
        return m

    async def locate(self, machine: Machine) -> Machine:
        if self.hold_locate is not None:
            await self.hold_locate.wait()
        if machine.id not in self.machines:
            raise CloudError("gone")
        host = f"10.0.0.{machine.id[1:]}"
        return Machine(machine.id, machine.name, machine.region, host, machine.port)

    async def destroy(self, machine: Machine) -> None:
        self.destroyed.append(machine.id)
        self.machines.pop(machine.id, None)

    async def list_tagged(self, cluster_tag: str) -> list[Machine]:
        return [m for m, tag in self.machines.values() if tag == cluster_tag]

    def describe(self, spec: MachineSpec) -> list[str]:
        return [f"fake create {spec.size.slug}"]

    async def close(self) -> None:
        return None


class FakeClient:
    """Answers /info for every host but the ``dead`` ones, and a finished task's info."""

    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.queue = 0

    async def info(self, node: Node) -> NodeInfo:
        if node.hostname in self.dead or "*" in self.dead:
            raise NodeUnreachable(f"{node.key} unreachable", node.key)
        return NodeInfo(version="2.5.0", task_queue_count=self.queue)

    async def task_info(self, node: Node, uuid: str) -> dict[str, Any]:
        return {"uuid": uuid, "name": "survey", "status": {"code": 40}, "imagesCount": 3,
                "processingTime": 5000, "dateCreated": int(T0 * 1000), "options": [],
                "progress": 100}  # fmt: skip

    async def get_json(self, node: Node, path: str, query: Any = None) -> Any:
        assert path.endswith("/output")
        return ["line 1", "line 2"]


class Rig:
    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.provider = FakeProvider()
        self.client = FakeClient()
        self.registry = NodeRegistry(self.store, online_window_s=120, clock=self.clock)  # type: ignore[arg-type]
        self.routes = RouteTable(self.store, clock=self.clock)  # type: ignore[arg-type]
        self.table = TaskTable(self.store)  # type: ignore[arg-type]
        self.released: list[str] = []
        raw = {"provider": "local", "command": "unused", "machinesLimit": -1, "clusterTag": TAG,
               "onlineTimeout": 0.3, "pollInterval": 0.01, "createRetryDelay": 0,
               "teardownDelay": 0, **config}  # fmt: skip
        self.asr = Autoscaler(
            parse_asr_config(raw),
            self.provider,
            self.registry,
            self.client,  # type: ignore[arg-type]
            self.routes,
            self.table,
            self.store,  # type: ignore[arg-type]
            lambda: "http://proxy:3000",
            release_images=self._release,
            clock=self.clock,
        )

    async def _release(self, uuid: str) -> None:
        self.released.append(uuid)

    async def node(self, uuid: str = "task-1", images: int = 3) -> Node:
        claim = self.asr.reserve(images)
        assert claim is not None
        return await self.asr.provision(claim, uuid, images)


# --- size choice and the machine limit ---------------------------------------------------------
MAPPING = [{"maxImages": 50, "slug": "medium"}, {"maxImages": 5, "slug": "small"},
           {"maxImages": 500, "slug": "large"}]  # fmt: skip


@pytest.mark.parametrize(
    ("images", "min_images", "slug"),
    [
        (1, -1, "small"),
        (5, -1, "small"),
        (6, -1, "medium"),
        (50, -1, "medium"),
        (51, -1, "large"),
        (500, -1, "large"),
        (501, -1, None),  # above every size
        (2, 3, None),  # below minImages
        (3, 3, "small"),
        (60, 10, "large"),
    ],
)
def test_size_is_the_first_that_fits(images: int, min_images: int, slug: str | None) -> None:
    rig = Rig(imageSizeMapping=MAPPING, minImages=min_images)
    claim = rig.asr.reserve(images)
    assert (claim.size.slug if claim else None) == slug
    assert rig.asr.can_handle(images) is (slug is not None)


async def test_machines_limit_counts_creations_and_spawned_nodes() -> None:
    rig = Rig(machinesLimit=2)
    first, second = rig.asr.reserve(1), rig.asr.reserve(1)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert rig.asr.reserve(1) is None  # two machines being created
    rig.asr.release(first)
    third = rig.asr.reserve(1)
    assert third is not None
    node = await rig.asr.provision(second, "task-1", 1)
    assert node.auto_spawned
    assert rig.asr.reserve(1) is None  # one node and one creation
    rig.asr.release(third)
    fourth = rig.asr.reserve(1)
    assert fourth is not None
    rig.asr.release(fourth)
    await rig.asr.discard(node.key)
    assert rig.registry.nodes() == [] and rig.provider.destroyed == ["m1"]
    assert rig.asr.reserve(1) is not None and rig.asr.reserve(1) is not None
    assert rig.asr.reserve(1) is None


async def test_released_claim_cannot_provision() -> None:
    rig = Rig()
    claim = rig.asr.reserve(1)
    rig.asr.release(claim)
    with pytest.raises(CloudError, match="no longer valid"):
        await rig.asr.provision(claim, "task-1", 1)
    assert rig.provider.created == []


# --- creating ----------------------------------------------------------------------------------
async def test_regions_are_tried_in_turn_across_create_retries() -> None:
    rig = Rig(region=["r1", "r2"], createRetries=3, machinesLimit=1)
    rig.provider.fail_regions = {"r1", "r2"}
    with pytest.raises(CloudError, match=r"attempted 3 times\): no capacity in r1"):
        await rig.node()
    assert [s.region for s in rig.provider.created] == ["r1", "r2", "r1"]
    assert rig.store.meta[PENDING_KEY] == "{}"
    rig.provider.fail_regions = {"r1"}
    node = await rig.node("task-2")  # the limit of 1 is free again
    assert [s.region for s in rig.provider.created[3:]] == ["r1", "r2"]
    assert node.machine is not None and node.machine["region"] == "r2"
    assert node.machine["task"] == "task-2" and node.machine["provider"] == "fake"
    spec = rig.provider.created[-1]
    assert spec.cluster_tag == TAG and spec.webhook == "http://proxy:3000/commit"
    assert spec.token and spec.token in spec.user_data


async def test_node_that_never_comes_online_is_destroyed_and_the_claim_released() -> None:
    rig = Rig(machinesLimit=1)
    rig.client.dead = {"*"}
    claim = rig.asr.reserve(2)
    assert claim is not None
    with pytest.raises(CloudError) as raised:
        await rig.asr.provision(claim, "task-1", 2)
    assert raised.value.message == OFFLINE_MSG
    assert rig.provider.destroyed == ["m1"] and rig.provider.machines == {}
    assert rig.registry.nodes() == []
    assert json.loads(rig.store.meta[PENDING_KEY]) == {}
    assert rig.asr.reserve(2) is not None  # the claim is gone


# --- vacuum ------------------------------------------------------------------------------------
MS = 1000
NOW = 10_000_000


@pytest.mark.parametrize(
    ("record", "online", "queue", "refreshed_ago_s", "why"),
    [
        ({"maxRuntime": 100}, True, 1, 0, None),
        ({"maxRuntime": 100, "created": NOW - 101 * MS}, True, 1, 0, "maximum runtime"),
        ({"maxRuntime": 100, "created": NOW - 99 * MS}, True, 1, 0, None),
        ({"maxUploadTime": 60, "created": NOW - 61 * MS}, True, 0, 0, "maximum upload time"),
        ({"maxUploadTime": 60, "created": NOW - 61 * MS}, True, 1, 0, None),  # busy
        ({"maxUploadTime": 60, "created": NOW - 59 * MS}, True, 0, 0, None),
        ({"maxUploadTime": 60, "created": NOW}, False, 0, 61, "offline for too long"),
        ({"maxUploadTime": 60, "created": NOW}, False, 0, 59, None),
        ({"maxUploadTime": -1, "created": 0}, False, 0, 10**6, None),  # no limit
        ({"maxRuntime": -1, "maxUploadTime": -1, "created": 0}, True, 0, 0, None),
    ],
)
def test_vacuum_reason(
    record: dict[str, Any], online: bool, queue: int, refreshed_ago_s: int, why: str | None
) -> None:
    found = vacuum_reason(record, online, queue, NOW - refreshed_ago_s * MS, NOW)
    if why is None:
        assert found is None, found
    else:
        assert found is not None and why in found, found


async def test_vacuum_max_runtime_with_the_clock(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(maxRuntime=100)
    node = await rig.node()
    assert node.machine is not None and node.machine["created"] == int(T0 * 1000)
    rig.clock.now += 50
    await rig.registry.record_info(node.key, NodeInfo(version="2", task_queue_count=1))
    assert await rig.asr.vacuum() == []
    rig.clock.now += 51
    with caplog.at_level(logging.WARNING):
        assert await rig.asr.vacuum() == [node.key]
    assert "exceeded its maximum runtime" in caplog.text
    assert rig.provider.destroyed == ["m1"] and rig.registry.nodes() == []


async def test_vacuum_max_upload_time_only_with_an_empty_queue() -> None:
    rig = Rig(maxUploadTime=60)
    node = await rig.node()
    rig.clock.now += 61
    await rig.registry.record_info(node.key, NodeInfo(version="2", task_queue_count=1))
    assert await rig.asr.vacuum() == []  # processing its task
    await rig.registry.record_info(node.key, NodeInfo(version="2", task_queue_count=0))
    assert await rig.asr.vacuum() == [node.key]
    assert rig.provider.destroyed == ["m1"]


async def test_vacuum_offline_longer_than_max_upload_time() -> None:
    rig = Rig(maxUploadTime=300)
    node = await rig.node()
    rig.clock.now += 200  # offline (no /info for longer than the online window), not long enough
    assert not rig.registry.is_online(rig.registry.nodes()[0])
    assert await rig.asr.vacuum() == []
    rig.clock.now += 101
    assert await rig.asr.vacuum() == [node.key]
    assert rig.provider.destroyed == ["m1"]


# --- orphans and start-up ----------------------------------------------------------------------
async def test_orphans_with_the_cluster_tag_are_destroyed_others_never() -> None:
    rig = Rig()
    node = await rig.node()
    rig.provider.add("orphan", TAG)
    rig.provider.add("other-cluster", "tag-B")
    rig.provider.add("untagged", None)
    orphans = await rig.asr.sweep_orphans()
    assert [m.id for m in orphans] == ["orphan"]
    assert rig.provider.destroyed == ["orphan"]
    assert set(rig.provider.machines) == {"m1", "other-cluster", "untagged"}
    assert rig.registry.get(node.key) is not None


async def test_a_machine_being_created_is_no_orphan() -> None:
    rig = Rig()
    rig.provider.hold_locate = asyncio.Event()
    job = asyncio.create_task(rig.node())
    await eventually(lambda: rig.provider.machines, message="machine created")
    assert await rig.asr.sweep_orphans() == []
    rig.provider.hold_locate.set()
    node = await job
    assert await rig.asr.sweep_orphans() == []
    assert rig.provider.destroyed == [] and node.auto_spawned


async def test_start_destroys_half_created_machines_and_orphans() -> None:
    rig = Rig(clusterTag="")
    rig.provider.add("half", "stored-tag")
    rig.provider.add("orphan", "stored-tag")
    rig.provider.add("foreign", "tag-B")
    rig.store.meta[TAG_KEY] = "stored-tag"
    rig.store.meta[PENDING_KEY] = json.dumps({"n1": {"id": "half", "name": "n1", "region": ""}})
    await rig.asr.start()
    assert rig.provider.started and rig.asr.cluster_tag == "stored-tag"
    assert sorted(rig.provider.destroyed) == ["half", "orphan"]
    assert set(rig.provider.machines) == {"foreign"}
    assert rig.store.meta[PENDING_KEY] == "{}"


async def test_start_makes_and_keeps_a_cluster_tag() -> None:
    rig = Rig(clusterTag="")
    await rig.asr.start()
    tag = rig.asr.cluster_tag
    assert tag.startswith("clusterodm-") and rig.store.meta[TAG_KEY] == tag


# --- teardown after /commit --------------------------------------------------------------------
#: a uuid as the node is asked about it (nodes/paths.py checks it)
TASK_UUID = "7d2a4c1e-0b3f-4e5a-9c8d-1f2e3d4c5b6a"


async def test_teardown_after_commit_keeps_the_task_info() -> None:
    rig = Rig()
    static = await rig.registry.add("static.example", 3000)
    await rig.routes.add("static-task", static.key, "")
    node = await rig.node(TASK_UUID)
    await rig.routes.add(TASK_UUID, node.key, "alice")
    assert await rig.asr.on_commit("unknown") is False
    assert await rig.asr.on_commit("static-task") is False  # not auto-spawned: nothing to do
    assert await rig.asr.on_commit(TASK_UUID) is True
    await eventually(lambda: rig.registry.get(node.key) is None, message="teardown")
    assert rig.provider.destroyed == ["m1"]
    entry = rig.table.get(TASK_UUID)
    assert entry is not None and entry.stage is TaskStage.FINISHED
    assert entry.owner == "alice" and entry.images_count == 3
    assert entry.output == ("line 1", "line 2") and int(entry.status) == 40
    assert rig.routes.get(TASK_UUID) is None and rig.routes.get("static-task") is not None
    assert rig.released == [TASK_UUID]
    assert [n.key for n in rig.registry.nodes()] == [static.key]


async def test_teardown_waits_for_the_delay_and_survives_a_failed_destroy() -> None:
    rig = Rig(teardownDelay=0.05)
    node = await rig.node(TASK_UUID)
    await rig.routes.add(TASK_UUID, node.key, "")

    async def refuse(machine: Machine) -> None:
        raise CloudError("API down")

    rig.provider.destroy = refuse  # type: ignore[method-assign]
    assert await rig.asr.on_commit(TASK_UUID)
    assert rig.registry.get(node.key) is not None  # not before the delay
    await eventually(lambda: rig.routes.get(TASK_UUID) is None, message="task info kept")
    await eventually(
        lambda: (rig.registry.get(node.key) or node).machine.get("teardown"),  # type: ignore[union-attr]
        message="teardown marked",
    )
    del rig.provider.destroy  # the next vacuum retries with a working API
    await rig.asr.vacuum()
    await eventually(lambda: rig.registry.nodes() == [], message="destroyed by the vacuum")
    assert rig.provider.destroyed == ["m1"]
