"""A cluster under attack: one node (simulated or real), ``--token`` or ``--users``, a finished
task for each of two users, and a client that sends paths byte for byte as written.

Every answer goes through :meth:`Attack.send`, which counts it (requests, 5xx) for the summary
that ``tests/conftest.py`` prints at the end of the run, and :func:`tracebacks` finds the log
records that carry one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from clusterodm.app import Cluster
from tests.conftest import ClusterFactory
from tests.helpers import eventually

TOKEN = "secret-7c1d0e5a"
ALICE = "alice-5f2e8c1b9a"
BOB = "bob-3d7a0f6e2c"
DONE = 40  # NodeODM's COMPLETED


def users_toml() -> str:
    alice = hashlib.sha256(ALICE.encode()).hexdigest()
    return f"""
[[user]]
name = "alice"
token_sha256 = "{alice}"

[[user]]
name = "bob"
token = "{BOB}"
"""


@dataclass
class Counts:
    """What a test sent and got, reported through ``record_property("hostile", ...)``."""

    requests: int = 0
    server_errors: int = 0
    tracebacks: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "5xx": self.server_errors,
            "tracebacks": self.tracebacks,
        }


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Attack:
    """A cluster and its two users' tasks; ``send`` sends a raw path (and query) as written."""

    cluster: Cluster
    mode: str  # "token" or "users"
    session: aiohttp.ClientSession
    node_kind: str = "sim"
    counts: Counts = field(default_factory=Counts)
    uuids: dict[str, str] = field(default_factory=dict)  # "a" / "b" -> uuid

    @property
    def base(self) -> str:
        return self.cluster.url

    def token(self, who: str) -> str:
        if self.mode == "token":
            return TOKEN
        return ALICE if who == "a" else BOB

    async def send(
        self, target: str, method: str = "GET", *, timeout_s: float = 20.0, **kwargs: Any
    ) -> Answer:
        """``target`` is the path and query exactly as they go on the wire."""
        url = URL(self.base + target, encoded=True)
        async with self.session.request(
            method,
            url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            **kwargs,
        ) as resp:
            body = await resp.read()
            answer = Answer(resp.status, body, dict(resp.headers))
        self.counted(answer.status)
        return answer

    async def send_raw(self, data: bytes) -> tuple[int, bytes]:
        """``data`` as it is on a connection of its own, read until the cluster closes it; the
        status and the body."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.cluster.port)
        try:
            writer.write(data)
            await writer.drain()
            got = await asyncio.wait_for(reader.read(-1), 10)
        finally:
            writer.close()
        head, _, body = got.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        self.counted(status)
        return status, body

    def counted(self, status: int) -> None:
        self.counts.requests += 1
        if status >= 500:
            self.counts.server_errors += 1


async def new_task(s: aiohttp.ClientSession, base: str, token: str) -> str:
    form = aiohttp.FormData()
    form.add_field("options", json.dumps([{"name": "orthophoto-resolution", "value": 5}]))
    for i in range(2):
        form.add_field("images", bytes([i]) * 4096, filename=f"img{i}.jpg")
    async with s.post(f"{base}/task/new", params={"token": token}, data=form) as resp:
        body = await resp.json()
    assert "uuid" in body, body
    return str(body["uuid"])


async def start_attack(
    mode: str,
    node: Any,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    **overrides: Any,
) -> Attack:
    """A cluster in front of ``node``, with a finished task for user a and one for user b."""
    if mode == "token":
        cluster = await cluster_factory([node], token=TOKEN, **overrides)
    else:
        users = tmp_path / "users.toml"
        users.write_text(users_toml())
        cluster = await cluster_factory([node], users_file=str(users), **overrides)
    attack = Attack(cluster, mode, session, getattr(node, "kind", "sim"))
    for who in ("a", "b"):
        attack.uuids[who] = await new_task(session, cluster.url, attack.token(who))

    async def finished() -> bool:
        for who, uuid in attack.uuids.items():
            url = f"{cluster.url}/task/{uuid}/info"
            async with session.get(url, params={"token": attack.token(who)}) as resp:
                info = await resp.json()
            if info.get("status", {}).get("code") != DONE:
                return False
        return True

    await eventually(finished, timeout_s=60, interval_s=0.2, message="both tasks finished")
    return attack


def all_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of the test's set-up and call, and of its tear-down so far (a fixture's
    tear-down sees only its own phase in ``caplog.records``)."""
    return caplog.get_records("setup") + caplog.get_records("call") + caplog.records


def tracebacks(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """Log records that carry a traceback, or that stand for one (an unhandled error)."""
    return [
        r
        for r in records
        if r.exc_info is not None
        or r.exc_text
        or "Traceback" in r.getMessage()
        or (r.levelno >= logging.ERROR and r.name.startswith(("aiohttp", "clusterodm.proxy")))
    ]


@pytest.fixture
async def client_session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def bounded(coro: Any, seconds: float = 30.0) -> Any:
    return await asyncio.wait_for(coro, seconds)
