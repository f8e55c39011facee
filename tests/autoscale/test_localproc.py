"""The whole lifecycle for real with the ``local`` provider: simulated nodes as processes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from clusterodm.autoscale import Autoscaler, MachineSize, MachineSpec, parse_asr_config
from clusterodm.autoscale.localproc import LocalProvider, render_command
from clusterodm.config import ScaleOutSettings
from clusterodm.model import TaskStage
from tests.autoscale.conftest import SIMNODE, AsrClusterFactory, fast
from tests.helpers import eventually

QUICK = ScaleOutSettings(claim_ttl_s=1.5, scan_s=0.3)


def images_form(n: int) -> aiohttp.FormData:
    f = aiohttp.FormData()
    for i in range(n):
        f.add_field("images", b"x" * 256, filename=f"i{i}.jpg")
    return f


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_task_gets_a_machine_that_is_destroyed_after_the_webhook(
    asr_cluster: AsrClusterFactory,
) -> None:
    cluster = await asr_cluster(
        fast(provider="local", command=SIMNODE + " --test_seconds 0.3", machinesLimit=1)
    )
    asr = cluster.extra["autoscaler"]
    assert isinstance(asr, Autoscaler)
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{cluster.url}/task/new", data=images_form(2))
        uuid = (await r.json())["uuid"]
        auto = await eventually(
            lambda: [n for n in cluster.registry.nodes() if n.auto_spawned], message="machine"
        )
        machine: dict[str, Any] = auto[0].machine
        pid = int(machine["id"])
        assert machine["provider"] == "local" and machine["task"] == uuid
        assert alive(pid)
        # the route goes to the new node; when the task ends, the node is torn down
        await eventually(lambda: cluster.deps.routes.get(uuid) is not None, message="route")
        await eventually(
            lambda: not any(n.auto_spawned for n in cluster.registry.nodes()),
            timeout_s=20,
            message="teardown",
        )
        await eventually(lambda: not alive(pid), message="process stopped")
        entry = cluster.deps.table.get(uuid)
        assert entry is not None and entry.stage is TaskStage.FINISHED
        assert cluster.deps.routes.get(uuid) is None
        body = await (await s.get(f"{cluster.url}/task/{uuid}/info?with_output=0")).json()
        assert body["status"]["code"] == 40, body
        assert body["imagesCount"] == 2
        assert body["output"], "the node's output is kept"


async def test_machine_limit_queues_the_second_task(asr_cluster: AsrClusterFactory) -> None:
    cluster = await asr_cluster(
        fast(provider="local", command=SIMNODE + " --test_seconds 1", machinesLimit=1)
    )
    async with aiohttp.ClientSession() as s:
        first = (await (await s.post(f"{cluster.url}/task/new", data=images_form(1))).json())[
            "uuid"
        ]
        await eventually(lambda: cluster.deps.routes.get(first) is not None, message="first")
        second = (await (await s.post(f"{cluster.url}/task/new", data=images_form(1))).json())[
            "uuid"
        ]
        await eventually(lambda: cluster.deps.dispatcher.queue_length() == 1, message="queued")
        assert sum(1 for n in cluster.registry.nodes() if n.auto_spawned) == 1
        # once the first machine is gone, the second task gets its own
        await eventually(
            lambda: cluster.deps.routes.get(second) is not None, timeout_s=20, message="second"
        )

        async def second_done() -> bool:
            body = await (await s.get(f"{cluster.url}/task/{second}/info")).json()
            return bool(body.get("status", {}).get("code") == 40)

        await eventually(second_done, timeout_s=20, message="second task completed")
    # its machine is destroyed after the task, not left running
    await eventually(
        lambda: not any(n.auto_spawned for n in cluster.registry.nodes()),
        timeout_s=20,
        message="the second machine destroyed",
    )


async def test_node_that_never_comes_online_is_destroyed(asr_cluster: AsrClusterFactory) -> None:
    cluster = await asr_cluster(
        fast(
            provider="local",
            command=f"{sys.executable} -c 'import time; time.sleep(60)' {{port}}",
            onlineTimeout=0.5,
        )
    )
    asr = cluster.extra["autoscaler"]
    claim = asr.reserve(1)
    assert claim is not None
    started: list[str] = []
    real_create = asr.provider.create

    async def create(spec: MachineSpec) -> Any:
        m = await real_create(spec)
        started.append(m.id)
        return m

    asr.provider.create = create
    try:
        await asr.provision(claim, "u1", 1)
        raise AssertionError("should not come online")
    except Exception as e:
        assert "did not get online" in str(e)
    assert started and not alive(int(started[0]))
    assert asr.reserve(1) is not None, "the claim was given back"


async def test_orphan_processes_are_destroyed(asr_cluster: AsrClusterFactory) -> None:
    cluster = await asr_cluster(fast(provider="local", command=SIMNODE))
    asr = cluster.extra["autoscaler"]
    spec = MachineSpec(
        "clusterodm-1-orphan", MachineSize(1, "local"), "local", "t", "http://x", "",
        asr.cluster_tag,
    )  # fmt: skip
    orphan = await asr.provider.create(spec)
    other_tag = await LocalProvider(asr.config).create(
        MachineSpec("someone-else", MachineSize(1, "l"), "local", "t", "http://x", "", "x-other")
    )
    try:
        listed = await asr.provider.list_tagged(asr.cluster_tag)
        assert [m.id for m in listed] == [orphan.id]
        await asr.vacuum()
        await eventually(lambda: not alive(int(orphan.id)), message="orphan gone")
        assert alive(int(other_tag.id)), "machines of other clusters are left alone"
    finally:
        await LocalProvider(asr.config).destroy(other_tag)


async def test_command_template() -> None:
    config = parse_asr_config({"provider": "local", "command": SIMNODE})
    spec = MachineSpec("n", MachineSize(1, "l"), "local", "tok", "http://h:1/commit", "", "t")
    argv = render_command(config.get("command"), spec, 4000)
    assert argv[:3] == [sys.executable, "-m", "clusterodm.simnode"]
    assert argv[3:] == ["--port", "4000", "--token", "tok", "--webhook", "http://h:1/commit"]
    await asyncio.sleep(0)


async def test_two_instances_on_one_redis_create_one_machine_per_need(
    asr_cluster: AsrClusterFactory, store_url: str, tmp_path: Path
) -> None:
    config = fast(provider="local", command=SIMNODE + " --test_seconds 0.5", machinesLimit=1)
    shared = {"store": store_url, "data_dir": tmp_path / "shared", "scale_out": QUICK}
    a = await asr_cluster(config, **shared)
    b = await asr_cluster(config, **shared)
    for node in b.registry.nodes():  # every static node locked: each task needs a machine
        await b.registry.set_locked(node.key, True)
    await eventually(lambda: all(n.locked for n in a.registry.nodes()), message="locks seen")
    seen: set[str] = set()
    most = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            spawned = [n for n in await a.store.list_nodes() if n.auto_spawned]
            most = max(most, len(spawned))
            seen.update(str(n.machine["id"]) for n in spawned if n.machine)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    async with aiohttp.ClientSession() as s:

        async def new(url: str) -> str:
            r = await s.post(f"{url}/task/new", data=images_form(1))
            return str((await r.json())["uuid"])

        uuids = await asyncio.gather(new(a.url), new(b.url))

        async def completed(uuid: str) -> bool:
            body = await (await s.get(f"{a.url}/task/{uuid}/info")).json()
            return bool(body.get("status", {}).get("code") == 40)

        for uuid in uuids:
            await eventually(lambda u=uuid: completed(u), timeout_s=45, message="completed")
        await eventually(
            lambda: not any(n.auto_spawned for n in a.registry.nodes()),
            timeout_s=20,
            message="both machines torn down",
        )
    done.set()
    await watcher
    assert most == 1, "machinesLimit counts both instances"
    assert len(seen) == 2, "one machine per task, created once"
