"""Three real proxy processes on one redis-server, a pyodm client spreading its calls over them.

Init on one instance, each upload on the next, commit on another, polls and downloads on all;
then ``kill -9`` of the instance dispatching a task: a survivor takes the task over.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest
from pyodm import Node
from pyodm.api import Task
from requests_toolbelt.multipart.encoder import MultipartEncoder

from clusterodm.model import TaskStage
from clusterodm.store.redis import RedisStore
from clusterodm.tasks.scaleout import task_key
from tests.conftest import SimnodeFactory
from tests.e2e.test_crash import write_nodes_json
from tests.helpers import eventually
from tests.proxyproc import ProxyProcess

CLAIM_TTL_S = 2.0


@pytest.fixture
async def instances(store_url: str, tmp_path: Path) -> AsyncIterator[list[ProxyProcess]]:
    """Three instances (not started) sharing the store and the data dir (staging)."""
    shared = tmp_path / "shared"
    flags = (f"--store={store_url}", f"--claim-ttl={CLAIM_TTL_S}")
    made = [ProxyProcess(shared, *flags) for _ in range(3)]
    yield made
    for p in made:
        await p.kill()


def pyodm_node(url: str) -> Node:
    host, port = url.removeprefix("http://").split(":")
    return Node(host, int(port), timeout=10)


def init(node: Node, name: str) -> str:
    fields = {"name": name, "options": json.dumps([{"name": "dsm", "value": True}])}
    e = MultipartEncoder(fields=fields)
    answer = node.post("/task/new/init", data=e, headers={"Content-Type": e.content_type})
    return str(answer["uuid"])


class RoundRobin:
    """pyodm's calls, as ``Node.create_task`` makes them, each to the next instance."""

    def __init__(self, urls: list[str]) -> None:
        self.nodes = cycle([pyodm_node(u) for u in urls])

    def next(self) -> Node:
        return next(self.nodes)

    def create_task(self, images: list[Path], name: str) -> str:
        uuid = init(self.next(), name)
        for path in images:
            e = MultipartEncoder(fields={"images": (path.name, path.read_bytes(), "image/jpg")})
            answer = self.next().post(
                f"/task/new/upload/{uuid}", data=e, headers={"Content-Type": e.content_type}
            )
            assert answer == {"success": True}
        assert self.next().post(f"/task/new/commit/{uuid}") == {"uuid": uuid}
        return uuid

    def status(self, uuid: str) -> int:
        return int(Task(self.next(), uuid).info().status.value)

    def download(self, node: Node, uuid: str, dest: Path) -> str:
        path = Task(node, uuid).download_zip(str(dest))
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_images(folder: Path, prefix: str, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = folder / f"{prefix}_{i}.JPG"
        p.write_bytes(os.urandom(2048))
        paths.append(p)
    return paths


async def completed(client: RoundRobin, uuid: str) -> bool:
    return await asyncio.to_thread(client.status, uuid) == 40


async def test_calls_spread_over_three_instances(
    instances: list[ProxyProcess], simnode_factory: SimnodeFactory, tmp_path: Path
) -> None:
    sim = await simnode_factory(test_seconds=0.3)
    write_nodes_json(instances[0].data_dir, sim)
    urls = [await p.start() for p in instances]
    client = RoundRobin(urls)
    uuids: dict[str, list[Path]] = {}
    for t in range(3):
        images = make_images(tmp_path / f"imgs{t}", f"t{t}", 4)
        uuid = await asyncio.to_thread(client.create_task, images, f"survey {t}")
        uuids[uuid] = images
    for uuid, images in uuids.items():
        await eventually(lambda u=uuid: completed(client, u), timeout_s=30, message="completed")
        assert sorted(sim.tasks[uuid].images) == sorted(p.name for p in images)
    for uuid in uuids:
        digests = set()
        for i, url in enumerate(urls):
            dest = tmp_path / f"out-{uuid}-{i}"
            dest.mkdir()
            digests.add(await asyncio.to_thread(client.download, pyodm_node(url), uuid, dest))
        assert len(digests) == 1, "every instance serves the same all.zip"


async def test_kill_9_of_the_dispatching_instance(
    instances: list[ProxyProcess],
    store_url: str,
    simnode_factory: SimnodeFactory,
    tmp_path: Path,
) -> None:
    sim = await simnode_factory(test_seconds=0.2)
    write_nodes_json(instances[0].data_dir, sim)
    urls = [await p.start() for p in instances]
    client = RoundRobin(urls)
    done = await asyncio.to_thread(client.create_task, make_images(tmp_path / "a", "a", 2), "a")
    await eventually(lambda: completed(client, done), timeout_s=30, message="first task done")

    # a task committed on instance 0, whose forwarding hangs: instance 0 holds its claim
    victim = pyodm_node(urls[0])
    uuid = await asyncio.to_thread(init, victim, "b")
    survivor = RoundRobin(urls[1:])
    for path in make_images(tmp_path / "b", "b", 3):
        e = MultipartEncoder(fields={"images": (path.name, path.read_bytes(), "image/jpg")})
        await asyncio.to_thread(
            survivor.next().post,
            f"/task/new/upload/{uuid}",
            e,
            {"Content-Type": e.content_type},
        )
    sim.config.hang = True
    commit: Any = await asyncio.to_thread(victim.post, f"/task/new/commit/{uuid}")
    assert commit == {"uuid": uuid}
    store = RedisStore(store_url)
    await store.open()
    try:

        async def dispatching() -> bool:
            task = await store.get_task(uuid)
            held = await store.holders([task_key(uuid)])
            return task is not None and task.stage is TaskStage.DISPATCHING and held[0] is not None

        await eventually(dispatching, timeout_s=10, message="dispatch under way")
    finally:
        await store.close()
    await instances[0].kill()
    sim.config.hang = False

    await eventually(lambda: uuid in sim.tasks, timeout_s=30, message="taken over")
    assert sorted(sim.tasks[uuid].images) == ["b_0.JPG", "b_1.JPG", "b_2.JPG"]
    await eventually(lambda: completed(survivor, uuid), timeout_s=30, message="completed")
    for _ in urls[1:]:
        assert await asyncio.to_thread(survivor.status, done) == 40, "routes answer"
