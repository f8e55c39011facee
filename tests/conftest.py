"""Suite-wide fixtures: real simulated nodes and real clusters on loopback, port 0."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterodm.app import Cluster, start_cluster
from clusterodm.config import DispatchSettings, Settings
from clusterodm.simnode import SimNode, SimNodeConfig, start_simnode
from tests import leaks
from tests.realnode import RealNode, start_real_node
from tests.redis_server import RedisServer, flush_all, redis_server_or_skip

leaks.mark_this_process()

SimnodeFactory = Callable[..., Awaitable[SimNode]]
ClusterFactory = Callable[..., Awaitable[Cluster]]


_STARTED_BY: dict[int, str] = {}  # pid -> the test during which it appeared


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session() -> Iterator[None]:
    """Fails the session when a process started by a test is still running once every fixture
    is torn down (``tests/leaks.py``); set up first, so torn down last."""
    yield
    deadline = time.monotonic() + 5.0  # a process told to stop may take a moment to go
    while (left := leaks.marked()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        lines = [f"{pid} ({_STARTED_BY.get(pid, 'unknown test')}): {c}" for pid, c in left.items()]
        pytest.fail("processes started by tests outlived them:\n" + "\n".join(lines))


@pytest.fixture(autouse=True)
def _note_started_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remembers which test started each child process, to name it if it leaks."""
    before = leaks.children()
    yield
    for pid in leaks.children() - before:
        _STARTED_BY.setdefault(pid, request.node.nodeid)


@pytest.fixture
async def simnode_factory() -> AsyncIterator[SimnodeFactory]:
    """Start simulated nodes: ``await simnode_factory(test_seconds=0.3, ...)``."""
    started: list[SimNode] = []

    async def make(**config: Any) -> SimNode:
        node = await start_simnode(SimNodeConfig(**config))
        started.append(node)
        return node

    yield make
    for node in started:
        await node.stop()


@pytest.fixture
async def real_node_factory() -> AsyncIterator[Callable[..., Awaitable[RealNode]]]:
    """Start real NodeODM nodes: ``await real_node_factory(test_seconds=1, token="x")``.

    Skips (fails under CI) without ``NODEODM_SH``; every node started is stopped afterwards.
    """
    started: list[RealNode] = []

    async def make(**config: Any) -> RealNode:
        node = await start_real_node(**config)
        started.append(node)
        return node

    yield make
    for node in started:
        await node.stop()


@pytest.fixture(params=["sim", "real"])
def node_factory(request: pytest.FixtureRequest) -> Callable[..., Awaitable[Any]]:
    """Start nodes of one kind per test run: the simulated node, then the real NodeODM.

    Both take the flags they share (``test_seconds``, ``token``, ``max_images``, ``parallel``);
    a test written against this fixture runs twice, once per kind (``node.kind`` says which).
    """
    factory_name = "simnode_factory" if request.param == "sim" else "real_node_factory"
    factory: Callable[..., Awaitable[Any]] = request.getfixturevalue(factory_name)
    return factory


def test_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a cluster under test: free ports, no admin ports, fast retries."""
    base: dict[str, Any] = {
        "port": 0,
        "bind": "127.0.0.1",
        "admin_cli_port": 0,
        "admin_web_port": 0,
        "data_dir": data_dir,
        "refresh_interval_s": 0.5,
        "dispatch": DispatchSettings(backoff_base_s=0.05, backoff_max_s=0.2),
    }
    base.update(overrides)
    return Settings(**base).validate()


@pytest.fixture
async def cluster_factory(tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """Start clusters: ``await cluster_factory(nodes=[simnode, ...], token="x", ...)``."""
    started: list[Cluster] = []

    async def make(nodes: list[SimNode] | None = None, **overrides: Any) -> Cluster:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(started)}")
        cluster = await start_cluster(test_settings(data_dir, **overrides))
        started.append(cluster)
        for node in nodes or []:
            token = node.config.token or ""
            added = await cluster.registry.add(node.host, node.port, token)
            await cluster.deps.health.refresh(added)
        return cluster

    yield make
    for cluster in started:
        await cluster.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session of this test worker (skips without the binary,
    fails under CI)."""
    server = redis_server_or_skip()
    yield server
    server.stop()


@pytest.fixture
def store_url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis store URL with a prefix of its own, emptied after the test."""
    yield f"{redis_server.url}?prefix=t-{uuidlib.uuid4().hex[:8]}:"
    flush_all(redis_server.port)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The hostile-input suite's counts (``tests/hostile``), summed over every test that
    recorded them with ``record_property("hostile", ...)``; shown in CI's output."""
    totals: dict[str, int] = {}
    tests = 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name == "hostile" and isinstance(value, dict):
                    tests += 1
                    for key, count in value.items():
                        totals[key] = totals.get(key, 0) + int(count)
    if tests:
        terminalreporter.write_sep("-", "hostile inputs")
        terminalreporter.write_line(
            f"hostile inputs: {totals.get('requests', 0)} requests tried in {tests} tests, "
            f"5xx: {totals.get('5xx', 0)}, tracebacks: {totals.get('tracebacks', 0)}, "
            f"malformed HTTP answered by the parser: {totals.get('malformed', 0)}"
        )
