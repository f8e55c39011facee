"""Store fixtures: every behaviour test runs against each backend, SQLite and Redis.

``store`` is an open store of the backend under test; ``make_store`` makes unopened stores that
share one location (file or key prefix), for reopen and concurrent-open tests. The Redis backend
uses one redis-server per test worker; each test gets its own key prefix and an empty server.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from clusterodm.store.base import Store
from clusterodm.store.redis import RedisStore
from clusterodm.store.sqlite import SqliteStore
from tests.redis_server import RedisServer, flush_all

StoreFactory = Callable[[], Store]
BACKENDS = ("sqlite", "redis")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The shared server's URL, emptied after the test."""
    yield redis_server.url
    flush_all(redis_server.port)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreFactory:
    if backend == "sqlite":
        path = tmp_path / "data" / "clusterodm.db"
        return lambda: SqliteStore(path)
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test-{uuidlib.uuid4().hex[:8]}:"
    return lambda: RedisStore(url, prefix=prefix)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    yield s
    await s.close()
