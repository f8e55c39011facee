"""Two users from a users file, simulated nodes: privacy, limits at every step, reload, 401s,
the flood limit and the failed-token guard, all through real HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData

from clusterodm.access.flood import FORGIVE_EVERY_S, FloodMonitor
from clusterodm.access.guard import FailedTokenGuard
from clusterodm.app import Cluster
from clusterodm.config import FailoverSettings
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually
from tests.helpers import write_atomically as write

ALICE = "alice-0f3c9a7e5d21b84c"
BOB = "bob-77aa21c0e9d3f615"


def users_toml(bob_images: int = 2) -> str:
    alice_sha = hashlib.sha256(ALICE.encode()).hexdigest()
    return f"""
[[user]]
name = "alice"
token_sha256 = "{alice_sha}"
max_images = 10
max_concurrent_tasks = 1
[user.options]
"feature-quality" = {{ domain = ["medium", "low"] }}
"min-num-features" = {{ between = {{ min = 1000, max = 20000 }} }}
"dsm" = {{ value = true, assure = true }}
"split" = {{ remove = true }}

[[user]]
name = "bob"
token = "{BOB}"
max_images = {bob_images}
"""


def images(count: int) -> FormData:
    f = FormData()
    for i in range(count):
        f.add_field("images", b"x" * 100, filename=f"i{i}.jpg")
    return f


def init_form(**fields: str) -> FormData:
    f = FormData(default_to_multipart=True)
    for k, v in fields.items():
        f.add_field(k, v)
    return f


class Client:
    def __init__(self, s: aiohttp.ClientSession, cluster: Cluster, token: str) -> None:
        self.s, self.url, self.token = s, cluster.url, token

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.s.request(method, f"{self.url}{path}", params={"token": self.token}, **kw)
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()

    async def init(self, **fields: str) -> Any:
        return await self.call("POST", "/task/new/init", data=init_form(name="t", **fields))

    async def submit(self, count: int = 1, **fields: str) -> str:
        uuid = (await self.init(**fields))["uuid"]
        assert (await self.call("POST", f"/task/new/upload/{uuid}", data=images(count)))["success"]
        assert (await self.call("POST", f"/task/new/commit/{uuid}"))["uuid"] == uuid
        return str(uuid)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    f = tmp_path / "users.toml"
    write(f, users_toml())
    return f


async def test_each_user_sees_only_their_tasks(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, users_file: Path
) -> None:
    sim = await simnode_factory(parallel=4)
    cluster = await cluster_factory([sim], users_file=str(users_file))
    async with aiohttp.ClientSession() as s:
        alice, bob = Client(s, cluster, ALICE), Client(s, cluster, BOB)
        a_uuid = await alice.submit()
        b_uuid = await bob.submit()
        await eventually(lambda: a_uuid in sim.tasks and b_uuid in sim.tasks)
        assert [t["uuid"] for t in await alice.call("GET", "/task/list")] == [a_uuid]
        assert [t["uuid"] for t in await bob.call("GET", "/task/list")] == [b_uuid]
        assert (await alice.call("GET", f"/task/{a_uuid}/info"))["uuid"] == a_uuid
        for path in (f"/task/{a_uuid}/info", f"/task/{a_uuid}/output"):
            body = await bob.call("GET", path)
            assert body["error"].startswith(f"Invalid route for taskId {a_uuid}")
        body = await bob.call("POST", "/task/remove", data={"uuid": a_uuid})
        assert "error" in body and a_uuid in sim.tasks
        # the owner on disk is the user's name, never their token
        route = cluster.deps.routes.get(a_uuid)
        assert route is not None and route.owner == "alice"
        for token in ("", "nope", ALICE.upper()):
            r = await s.get(f"{cluster.url}/task/list", params={"token": token} if token else {})
            assert r.status == 401
        assert (await s.get(f"{cluster.url}/auth/info")).status == 200


async def test_limits_at_every_step(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, users_file: Path
) -> None:
    sim = await simnode_factory(test_seconds=30, parallel=4)
    cluster = await cluster_factory(
        [sim], users_file=str(users_file), failover=FailoverSettings(check_s=0.1)
    )
    async with aiohttp.ClientSession() as s:
        alice, bob = Client(s, cluster, ALICE), Client(s, cluster, BOB)
        info = await alice.call("GET", "/info")
        assert (info["maxImages"], info["maxParallelTasks"]) == (10, 1)
        opts = {o["name"]: o for o in await alice.call("GET", "/options")}
        assert "split" not in opts and "max-concurrency" not in opts
        assert opts["feature-quality"]["domain"] == ["medium", "low"]
        assert opts["min-num-features"]["domain"] == "integer: 1000 <= x <= 20000"
        assert "split" in {o["name"] for o in await bob.call("GET", "/options")}

        # init: a value outside the user's domain is refused as NodeODM would
        bad = json.dumps([{"name": "feature-quality", "value": "ultra"}])
        body = await alice.init(options=bad)
        assert json.loads(body["error"]) == [
            {"name": "feature-quality", "error": "Invalid value ultra (not in enum)"}
        ]
        # no more images than allowed: the extra one is dropped, the task refused at commit
        # (pyodm retries a refused upload for over a minute; a refused commit it reports)
        uuid = (await bob.init())["uuid"]
        body = await bob.call("POST", f"/task/new/upload/{uuid}", data=images(3))
        assert body == {"success": True}
        body = await bob.call("POST", f"/task/new/commit/{uuid}")
        assert "only upload up to 2 images" in body["error"]
        assert uuid not in sim.tasks

        # dispatch: clamped, forced and removed options
        opts_in = [
            {"name": "min-num-features", "value": 99999},
            {"name": "split", "value": 10},
            {"name": "feature-quality", "value": "low"},
        ]
        a1 = await alice.submit(options=json.dumps(opts_in))
        await eventually(lambda: a1 in sim.tasks)
        sent = {o["name"]: o["value"] for o in sim.tasks[a1].options}
        assert sent["min-num-features"] == 20000
        assert sent["dsm"] is True
        assert sent["feature-quality"] == "low"
        assert "split" not in sent and "sm-cluster" not in sent

        # concurrency: a1 runs on the node, so a second task of alice's waits at the proxy
        # (original: refused) until a1 ends, while bob, who has no limit, goes straight on
        a2 = await alice.submit()
        b1 = await bob.submit()
        await eventually(lambda: b1 in sim.tasks, message="bob is not held back")

        async def a2_waits_for_a1() -> bool:
            info = await alice.call("GET", f"/task/{a2}/info?with_output=0")
            return info["status"]["code"] == 10 and any(
                "waiting for one of your tasks to finish" in line for line in info["output"]
            )

        await eventually(a2_waits_for_a1, message="a2 queued behind alice's limit")
        assert a2 not in sim.tasks
        await alice.call("POST", "/task/cancel", data={"uuid": a1})
        await eventually(lambda: a2 in sim.tasks, timeout_s=10, message="a2 sent once a1 ended")


async def test_users_file_reload_applies_without_restart(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, users_file: Path
) -> None:
    cluster = await cluster_factory(
        [await simnode_factory()], users_file=str(users_file), users_reload_s=0.05
    )
    async with aiohttp.ClientSession() as s:

        async def max_images(token: str) -> Any:
            r = await s.get(f"{cluster.url}/info", params={"token": token})
            return (await r.json())["maxImages"] if r.status == 200 else r.status

        assert await max_images(BOB) == 2
        write(users_file, users_toml(bob_images=7))
        await eventually(lambda: _is(max_images(BOB), 7), timeout_s=5)
        new_token = "bob-new-token-123456789"
        write(users_file, users_toml(bob_images=7).replace(BOB, new_token))
        await eventually(lambda: _is(max_images(BOB), 401), timeout_s=5)
        assert await max_images(new_token) == 7
        assert await max_images(ALICE) == 10


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_flood_limit_per_token_trips_and_recovers(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, users_file: Path
) -> None:
    cluster = await cluster_factory([await simnode_factory()], users_file=str(users_file))
    now = [0.0]
    cluster.deps.intake.flood = FloodMonitor(2, clock=lambda: now[0])
    async with aiohttp.ClientSession() as s:
        alice, bob = Client(s, cluster, ALICE), Client(s, cluster, BOB)
        assert "uuid" in await alice.init()
        assert "uuid" in await alice.init()
        assert (await alice.init())["error"].startswith("Uuh, slow down!")
        assert "uuid" in await bob.init(), "each token has its own count"
        now[0] += FORGIVE_EVERY_S  # 3 -> 1
        assert "uuid" in await alice.init()


async def test_failed_tokens_are_slowed_down(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, users_file: Path
) -> None:
    cluster = await cluster_factory([await simnode_factory()], users_file=str(users_file))
    now = [0.0]
    cluster.deps.guard = FailedTokenGuard(3, 60.0, clock=lambda: now[0])
    async with aiohttp.ClientSession() as s:

        async def status(token: str | None) -> int:
            params = {"token": token} if token is not None else {}
            return (await s.get(f"{cluster.url}/info", params=params)).status

        assert [await status(None) for _ in range(5)] == [401] * 5, "missing tokens guess nothing"
        assert [await status(f"guess{i}") for i in range(3)] == [401, 401, 401]
        r = await s.get(f"{cluster.url}/info", params={"token": "guess4"})
        assert r.status == 429 and int(r.headers["Retry-After"]) == 60
        assert "Too many failed authentication attempts" in (await r.json())["error"]
        assert await status(ALICE) == 429, "while refused, even a right token tells nothing"
        now[0] += 60
        assert await status(ALICE) == 200
