"""The lightning provider against a fake token service on loopback (its HTTP boundary)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from clusterodm.access.base import User
from clusterodm.access.guard import AuthUnavailable
from clusterodm.access.lightning import LightningAccess, owner_of
from clusterodm.config import LightningSettings
from clusterodm.errors import AuthError, LimitExceeded
from tests.conftest import ClusterFactory, SimnodeFactory

GOOD = "good-token"
LIMITS = {
    "maxImages": 3,
    "maxConcurrentTasks": 1,
    "options": {"feature-quality": {"domain": ["low"]}},
}
FAST = LightningSettings(
    timeout_s=2.0, validate_attempts=3, finished_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02
)


@dataclass
class FakeService:
    url: str = ""
    failures_left: int = 0  # answer 500 this many times first
    approve: dict[str, Any] = field(default_factory=lambda: {"approved": True, "error": ""})
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/r/tokens/validate", self.validate)
        app.router.add_post("/r/tasks/approve", self.approved)
        app.router.add_post("/r/tasks/finished", self.finished)
        return app

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        body = await request.json()
        self.received.append((request.path, body))
        if self.failures_left > 0:
            self.failures_left -= 1
            return None
        return body

    async def validate(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body is None:
            return web.Response(status=500)
        if body["token"] == GOOD:
            return web.json_response({"valid": True, "limits": LIMITS})
        return web.json_response({"valid": False})

    async def approved(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return web.json_response(self.approve) if body else web.Response(status=502)

    async def finished(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return web.json_response({"credits_used": 1}) if body else web.Response(status=500)


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    fake = FakeService()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{site.port}/r"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def access(service: FakeService) -> AsyncIterator[LightningAccess]:
    a = LightningAccess(service.url, FAST)
    yield a
    await a.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_valid_token_gets_its_limits_and_is_cached(
    service: FakeService, access: LightningAccess
) -> None:
    user = await access.authenticate(GOOD)
    assert user.owner == owner_of(GOOD) and GOOD not in user.owner
    assert (user.limits.max_images, user.limits.max_concurrent_tasks) == (3, 1)
    assert user.limits.options == LIMITS["options"]
    await access.authenticate(GOOD)
    assert service.received == [("/r/tokens/validate", {"token": GOOD})], "second call cached"
    access.clear_cache(GOOD)
    await access.authenticate(GOOD)
    assert len(service.received) == 2


async def test_cache_expires_after_15_minutes(service: FakeService) -> None:
    now = [0.0]
    a = LightningAccess(service.url, FAST, clock=lambda: now[0])
    try:
        await a.authenticate(GOOD)
        now[0] = 15 * 60 - 1
        await a.authenticate(GOOD)
        assert len(service.received) == 1
        now[0] = 15 * 60
        await a.authenticate(GOOD)
        assert len(service.received) == 2
    finally:
        await a.close()


async def test_invalid_and_missing_tokens_are_refused(
    service: FakeService, access: LightningAccess
) -> None:
    with pytest.raises(AuthError) as e:
        await access.authenticate("bad")
    assert not isinstance(e.value, AuthUnavailable)
    with pytest.raises(AuthError):
        await access.authenticate("")
    assert [b["token"] for _, b in service.received] == ["bad"], "no call for a missing token"


async def test_validation_retries_then_succeeds(
    service: FakeService, access: LightningAccess
) -> None:
    service.failures_left = 2
    assert (await access.authenticate(GOOD)).limits.max_images == 3
    assert len(service.received) == 3


async def test_unreachable_service_is_a_clear_401_not_cached() -> None:
    a = LightningAccess(f"http://127.0.0.1:{closed_port()}/r", FAST)
    try:
        with pytest.raises(AuthUnavailable) as e:
            await a.authenticate(GOOD)
        assert e.value.status == 401
        assert "authentication service did not answer" in e.value.message
        assert a.calls["validate"] == 3
        with pytest.raises(AuthUnavailable):
            await a.authenticate(GOOD)
        assert a.calls["validate"] == 6, "a failure is not cached"
        with pytest.raises(LimitExceeded, match=r"Cannot approve task\. Please contact support\."):
            await a.approve_task(User(GOOD), 5)
    finally:
        await a.close()


async def test_approve_sends_the_image_count(service: FakeService, access: LightningAccess) -> None:
    await access.approve_task(User(GOOD), 7)
    assert service.received == [("/r/tasks/approve", {"token": GOOD, "imagesCount": 7})]
    service.approve = {"approved": False, "error": "Not enough credits"}
    with pytest.raises(LimitExceeded, match="Not enough credits"):
        await access.approve_task(User(GOOD), 7)
    service.failures_left = 1
    with pytest.raises(LimitExceeded, match="Service responded with status 502"):
        await access.approve_task(User(GOOD), 7)


async def test_finished_notice_is_retried(service: FakeService, access: LightningAccess) -> None:
    service.failures_left = 1
    info = {"uuid": "u1", "status": {"code": 40}}
    await access.task_finished(User(GOOD), "u1", info)
    assert len(service.received) == 2
    path, body = service.received[-1]
    assert path == "/r/tasks/finished"
    assert body["token"] == GOOD and json.loads(body["taskInfo"]) == info


def test_auth_info_points_at_the_login() -> None:
    info = LightningAccess().auth_info()
    assert info["loginUrl"] == "https://webodm.net/r/auth/getToken"
    assert info["message"].startswith("Please enter your webodm.net credentials.")
    assert info["registerUrl"] is None
    custom = LightningAccess("https://hub.example.org/r").auth_info()
    assert custom["loginUrl"] == "https://hub.example.org/r/auth/getToken"


async def test_cluster_with_lightning_provider(
    service: FakeService, simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory(
        [await simnode_factory()],
        cloud_provider="lightning",
        lightning_url=service.url,
        lightning=FAST,
    )
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{cluster.url}/info", params={"token": GOOD})
        info = await r.json()
        assert (info["maxImages"], info["maxParallelTasks"]) == (3, 1)
        r = await s.get(f"{cluster.url}/info", params={"token": "bad"})
        assert r.status == 401
        opts = {
            o["name"]: o for o in await (await s.get(f"{cluster.url}/options?token={GOOD}")).json()
        }
        assert opts["feature-quality"]["domain"] == ["low"]
        assert "max-concurrency" not in opts
        auth = await (await s.get(f"{cluster.url}/auth/info")).json()
        assert auth["loginUrl"] == service.url + "/auth/getToken"


async def test_finished_notice_uses_the_token_behind_a_route_owner(
    service: FakeService, access: LightningAccess
) -> None:
    user = await access.authenticate(GOOD)
    assert user.owner != GOOD, "routes store a hash, not the token"
    # the /commit webhook knows only the route's owner
    await access.task_finished(User("", owner=user.owner), "u2")
    path, body = service.received[-1]
    assert path == "/r/tasks/finished" and body["token"] == GOOD
    before = len(service.received)
    await access.task_finished(User("", owner="someone-unknown"), "u3")
    assert len(service.received) == before, "no token, nothing sent"
