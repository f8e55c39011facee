"""What the proxy's handlers are given, through one typed AppKey (wired by ``app.py``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from clusterodm.access.base import AccessProvider, User
from clusterodm.access.guard import FailedTokenGuard
from clusterodm.config import Settings
from clusterodm.errors import NoNodeAvailable
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.discovery import Discovery
from clusterodm.nodes.health import HealthMonitor
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.proxy.answers import AnswerCache
from clusterodm.tasks.actions import TaskActions
from clusterodm.tasks.dispatch import Dispatcher
from clusterodm.tasks.events import TaskEvents
from clusterodm.tasks.intake import TaskIntake
from clusterodm.tasks.lastknown import LastKnown
from clusterodm.tasks.options import Option
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable


@dataclass(slots=True)
class OptionsCache:
    """The reference node's ``/options``, cached (1 h by default; ``--debug`` disables it)."""

    registry: NodeRegistry
    client: NodeClient
    ttl_s: float
    _value: list[Option] | None = None
    _key: str = ""
    _at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    async def get(self) -> list[Option]:
        ref = self.registry.reference()
        if ref is None:
            raise NoNodeAvailable("No nodes are online.")
        now = time.monotonic()
        if self._value is not None and self._key == ref.key and now - self._at < self.ttl_s:
            return self._value
        self._value = await self.client.options(ref)
        self._key, self._at = ref.key, now
        return self._value

    def clear(self) -> None:
        self._value = None


@dataclass(slots=True)
class ProxyDeps:
    settings: Settings
    registry: NodeRegistry
    client: NodeClient
    health: HealthMonitor
    routes: RouteTable
    table: TaskTable
    intake: TaskIntake
    dispatcher: Dispatcher
    access: AccessProvider
    options: OptionsCache
    actions: TaskActions
    guard: FailedTokenGuard = field(default_factory=lambda: FailedTokenGuard(10, 600.0))
    discovery: Discovery | None = None  # --nodes-from
    events: TaskEvents = field(default_factory=TaskEvents)
    #: ``/info`` and ``/options`` bodies, kept until their state changes (``answers.py``)
    info_bodies: AnswerCache = field(default_factory=AnswerCache)
    options_bodies: AnswerCache = field(default_factory=AnswerCache)
    last_known: LastKnown = field(default_factory=LastKnown)


DEPS = web.AppKey("deps", ProxyDeps)
USER = web.RequestKey("user", User)


def deps(request: web.Request) -> ProxyDeps:
    return request.app[DEPS]


def user_of(request: web.Request) -> User:
    user = request.get(USER)
    assert isinstance(user, User), "token middleware did not run"
    return user
