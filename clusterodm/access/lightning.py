"""The lightning provider: an external token service decides who may use the cluster.

Speaks the original's protocol (JSON POSTs under the service URL, default
``https://webodm.net/r``):

- ``/tokens/validate`` ``{token}`` -> ``{valid, limits: {maxImages, maxConcurrentTasks,
  options}}``; a 200 answer is kept 15 minutes per token, failures are retried.
- ``/tasks/approve`` ``{token, imagesCount}`` -> ``{approved, error}``, once per commit.
- ``/tasks/finished`` ``{token, taskInfo: "<json text>"}``, retried until it has no ``error``.

An adapter: aiohttp errors become AuthError / LimitExceeded here, nothing else sees them.
Original: validation retried 10 times with 2 s * i sleeps (minutes for one request);
here the attempts and a capped, jittered backoff come from ``LightningSettings``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from clusterodm.access.base import Limits, User
from clusterodm.access.guard import AuthUnavailable
from clusterodm.config import LightningSettings
from clusterodm.errors import AuthError, LimitExceeded
from clusterodm.tasks.limits import parse_rules

log = logging.getLogger(__name__)

DEFAULT_URL = "https://webodm.net/r"
MAX_CACHED = 10_000


class ServiceError(Exception):
    """The token service did not give a usable answer."""


def owner_of(token: str) -> str:
    """A stable, non-secret id for a token's routes and tasks (the token itself is not stored)."""
    return "lightning:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]


def mask(token: str) -> str:
    return token[:4] + "…" if len(token) > 4 else "…"


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def limits_from(raw: Any) -> Limits:
    """The service's ``limits`` as ours; rules that do not parse are dropped with a warning."""
    if not isinstance(raw, dict):
        return Limits()  # the original's "no limits" is an empty list
    max_images = _count(raw.get("maxImages"))
    options = raw.get("options")
    try:
        parse_rules(options)
    except ValueError as e:
        log.warning("token service sent option limits we cannot apply (%s); ignored", e)
        options = None
    return Limits(
        max_images=max_images or None,  # original: 0 means no limit
        max_concurrent_tasks=_count(raw.get("maxConcurrentTasks")),
        options={str(k): dict(v) for k, v in options.items()} if isinstance(options, dict) else {},
    )


class LightningAccess:
    per_user = True

    def __init__(
        self,
        url: str = DEFAULT_URL,
        settings: LightningSettings | None = None,
        cache: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        self.settings = settings or LightningSettings()
        self.cache_enabled = cache
        self._clock = clock
        self._cache: dict[bytes, tuple[float, dict[str, Any]]] = {}
        self._tokens: dict[str, str] = {}  # owner hash -> token, of tokens validated here
        self._session: aiohttp.ClientSession | None = None
        self.calls: dict[str, int] = {"validate": 0, "approve": 0, "finished": 0}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call; ServiceError for anything but a 200 with a JSON object."""
        try:
            async with self._http().post(self.url + path, json=body) as resp:
                if resp.status != 200:
                    raise ServiceError(f"Service responded with status {resp.status}")
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, ValueError) as e:
            raise ServiceError(str(e) or type(e).__name__) from None
        if not isinstance(answer, dict):
            raise ServiceError("Service answered something else than a JSON object")
        return answer

    async def _backoff(self, attempt: int) -> None:
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _cached(self, key: bytes) -> dict[str, Any] | None:
        hit = self._cache.get(key)
        if hit is None or not self.cache_enabled:
            return None
        at, answer = hit
        if self._clock() - at >= self.settings.cache_s:
            del self._cache[key]
            return None
        return answer

    def _remember(self, key: bytes, answer: dict[str, Any]) -> None:
        if len(self._cache) >= MAX_CACHED:
            now = self._clock()
            for k in [k for k, (at, _) in self._cache.items() if now - at >= self.settings.cache_s]:
                del self._cache[k]
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[key] = (self._clock(), answer)

    def clear_cache(self, token: str) -> None:
        self._cache.pop(hashlib.sha256(token.encode("utf-8")).digest(), None)

    async def _validate(self, token: str) -> dict[str, Any]:
        key = hashlib.sha256(token.encode("utf-8")).digest()
        cached = self._cached(key)
        if cached is not None:
            return cached
        attempts = max(1, self.settings.validate_attempts)
        for attempt in range(1, attempts + 1):
            self.calls["validate"] += 1
            try:
                answer = await self._post("/tokens/validate", {"token": token})
            except ServiceError as e:
                log.warning("cannot validate token %s: %s (attempt %d)", mask(token), e, attempt)
                if attempt < attempts:
                    await self._backoff(attempt)
                continue
            self._remember(key, answer)
            return answer
        raise AuthUnavailable(
            "Cannot validate the token: the authentication service did not answer. Try again later."
        )

    async def authenticate(self, token: str) -> User:
        if not token:
            raise AuthError("Missing authentication token.")
        answer = await self._validate(token)
        if answer.get("valid") is not True:
            raise AuthError("Invalid authentication token.")
        owner = owner_of(token)
        self._tokens[owner] = token  # for the task-finished notice; never written to disk
        return User(token=token, owner=owner, limits=limits_from(answer.get("limits")))

    async def approve_task(self, user: User, images: int) -> None:
        if not user.token:
            raise LimitExceeded("Invalid token")
        if images <= 0:
            raise LimitExceeded("Invalid images count")
        self.calls["approve"] += 1
        try:
            answer = await self._post(
                "/tasks/approve", {"token": user.token, "imagesCount": images}
            )
        except ServiceError as e:
            log.warning("cannot approve a task for %s: %s", mask(user.token), e)
            raise LimitExceeded(f"Cannot approve task. Please contact support. {e}") from None
        if answer.get("approved") is not True:
            raise LimitExceeded(str(answer.get("error") or "Task not approved."))

    async def task_finished(
        self, user: User, uuid: str, task_info: dict[str, Any] | None = None
    ) -> None:
        """Tell the service a task ended (``task_info``: the node's task info, if known).

        The route keeps only a hash of the token (the original stored the token itself), so the
        token is the one this process last validated for that hash: a task whose owner made no
        request since a restart of the proxy cannot be reported.
        """
        token = user.token or self._tokens.get(user.owner, "")
        user = User(token=token, owner=user.owner, name=user.name, limits=user.limits)
        if not user.token:
            log.error("task %s finished, but its token is unknown: not recorded", uuid)
            return
        body = {"token": user.token, "taskInfo": json.dumps(task_info or {"uuid": uuid})}
        attempts = max(1, self.settings.finished_attempts)
        for attempt in range(1, attempts + 1):
            self.calls["finished"] += 1
            try:
                answer = await self._post("/tasks/finished", body)
            except ServiceError as e:
                log.error("task %s: /tasks/finished failed: %s (attempt %d)", uuid, e, attempt)
            else:
                if not answer.get("error"):
                    return
                log.error("task %s: /tasks/finished answered: %s", uuid, answer["error"])
            if attempt < attempts:
                await self._backoff(attempt)
        log.error("task %s: /tasks/finished gave up after %d attempts", uuid, attempts)

    def auth_info(self) -> dict[str, Any]:
        if self.url == DEFAULT_URL:
            site, host = "https://webodm.net", "webodm.net"
        else:
            parts = urlsplit(self.url)
            site, host = f"{parts.scheme}://{parts.netloc}", parts.netloc
        return {
            "message": f"Please enter your {host} credentials. If you don't have an account, "
            f"register for free at {site}/register",
            "loginUrl": f"{self.url}/auth/getToken",
            "registerUrl": None,
        }
