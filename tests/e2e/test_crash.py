"""The proxy killed with SIGKILL mid-staging and mid-dispatch: nothing is lost after a restart."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import FormData

from clusterodm.simnode import SimNode
from tests.conftest import SimnodeFactory
from tests.helpers import eventually
from tests.proxyproc import ProxyProcess


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    p = ProxyProcess(tmp_path / "data")
    yield p
    await p.kill()


def write_nodes_json(data_dir: Path, *nodes: SimNode) -> None:
    """Pre-populate nodes as users of the original do: data/nodes.json, port as a string."""
    data_dir.mkdir(parents=True, exist_ok=True)
    entries = [{"hostname": n.host, "port": str(n.port), "token": ""} for n in nodes]
    (data_dir / "nodes.json").write_text(json.dumps(entries))


def files_form(names: list[str]) -> FormData:
    f = FormData()
    for name in names:
        f.add_field("images", os.urandom(4096), filename=name)
    return f


async def create_task(s: aiohttp.ClientSession, url: str, images: int) -> str:
    uuid = (await (await s.post(f"{url}/task/new/init", data=FormData({"name": "t"}))).json())[
        "uuid"
    ]
    await upload(s, url, uuid, [f"a{i}.jpg" for i in range(images)])
    assert await (await s.post(f"{url}/task/new/commit/{uuid}")).json() == {"uuid": uuid}
    return uuid


async def upload(s: aiohttp.ClientSession, url: str, uuid: str, names: list[str]) -> None:
    r = await s.post(f"{url}/task/new/upload/{uuid}", data=files_form(names))
    assert await r.json() == {"success": True}


async def status(s: aiohttp.ClientSession, url: str, uuid: str) -> int | None:
    body = await (await s.get(f"{url}/task/{uuid}/info")).json()
    return body.get("status", {}).get("code")


async def status_is(s: aiohttp.ClientSession, url: str, uuid: str, code: int) -> bool:
    return await status(s, url, uuid) == code


async def test_kill_during_staging(proxy: ProxyProcess, simnode_factory: SimnodeFactory) -> None:
    sim = await simnode_factory(test_seconds=0.2)
    write_nodes_json(proxy.data_dir, sim)
    url = await proxy.start()
    async with aiohttp.ClientSession() as s:
        done = await create_task(s, url, 2)
        await eventually(lambda: status(s, url, done), message="first task known")
        await eventually(lambda: sim.tasks.get(done), message="first task on node")

        init = await s.post(f"{url}/task/new/init", data=FormData({"name": "staged"}))
        uuid = (await init.json())["uuid"]
        await upload(s, url, uuid, ["x1.jpg", "x2.jpg"])
        await proxy.kill()

        url = await proxy.start()
        await upload(s, url, uuid, ["x3.jpg"])
        commit = await s.post(f"{url}/task/new/commit/{uuid}")
        assert await commit.json() == {"uuid": uuid}
        await eventually(lambda: uuid in sim.tasks, message="staged task dispatched")
        assert sorted(sim.tasks[uuid].images) == ["x1.jpg", "x2.jpg", "x3.jpg"]
        await eventually(
            lambda: status_is(s, url, uuid, 40), timeout_s=15, message="task completed"
        )
        assert await status(s, url, done) == 40, "an earlier route still answers"


def task_stage(db: Path, uuid: str) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT stage FROM tasks WHERE uuid = ?", (uuid,)).fetchone()
    return row[0] if row else None


async def test_kill_during_dispatch(proxy: ProxyProcess, simnode_factory: SimnodeFactory) -> None:
    sim = await simnode_factory(test_seconds=0.2)
    write_nodes_json(proxy.data_dir, sim)
    url = await proxy.start()
    async with aiohttp.ClientSession() as s:
        init = await s.post(f"{url}/task/new/init", data=FormData({"name": "d"}))
        uuid = (await init.json())["uuid"]
        await upload(s, url, uuid, ["a.jpg", "b.jpg", "c.jpg"])
        sim.config.hang = True  # the node accepts connections but never answers
        assert await (await s.post(f"{url}/task/new/commit/{uuid}")).json() == {"uuid": uuid}
        db = proxy.data_dir / "clusterodm.db"
        await eventually(
            lambda: task_stage(db, uuid) == "dispatching", message="dispatch under way"
        )
        await proxy.kill()
        sim.config.hang = False

        url = await proxy.start()
        assert await status(s, url, uuid) in (20, 40), "the task is still known"
        await eventually(lambda: uuid in sim.tasks, timeout_s=15, message="re-dispatched")
        assert sorted(sim.tasks[uuid].images) == ["a.jpg", "b.jpg", "c.jpg"]
        await eventually(
            lambda: status_is(s, url, uuid, 40), timeout_s=15, message="task completed"
        )


def test_subprocess_is_not_left_behind() -> None:
    """Guard: the proxy module runs as a program (``python -m clusterodm --help``)."""
    out = subprocess.run(
        [sys.executable, "-m", "clusterodm", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    for flag in ("--port", "--admin-cli-port", "--admin-web-port", "--data-dir", "--asr"):
        assert flag in out.stdout
