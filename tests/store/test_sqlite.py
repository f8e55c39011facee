"""SqliteStore: the file (WAL, schema version, mode), opening it concurrently, kill -9.

The behaviour every backend shares (round trips, ordering, atomic steps, bulk speed) is tested
against this store too, in test_base.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import clusterodm
from clusterodm.errors import StoreError
from clusterodm.store.base import Store
from clusterodm.store.sqlite import SCHEMA_VERSION, SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "clusterodm.db")
    await s.open()
    yield s
    await s.close()


def test_satisfies_store_protocol(tmp_path: Path) -> None:
    store: Store = SqliteStore(tmp_path / "x.db")
    assert callable(store.put_routes)


async def test_open_sets_wal_and_schema_version(store: SqliteStore) -> None:
    assert await store.schema_version() == SCHEMA_VERSION >= 1
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(path).open()


async def test_two_stores_opening_a_new_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    stores = [SqliteStore(path) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [SCHEMA_VERSION] * 4
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_new_file_is_owner_only(store: SqliteStore) -> None:
    assert store.path.stat().st_mode & 0o077 == 0


REPO_ROOT = Path(clusterodm.__file__).resolve().parent.parent

CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from clusterodm.model import Node, Route
    from clusterodm.store.sqlite import SqliteStore

    async def main() -> None:
        store = SqliteStore(Path(sys.argv[1]))
        await store.open()
        await store.put_node(Node("n", 1))
        i = 0
        while True:
            await store.put_route(Route(f"u{i}", "n:1", "tok", i))
            print(i, flush=True)
            i += 1

    asyncio.run(main())
    """
)


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_CHILD, str(path), stdout=asyncio.subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    acknowledged = -1
    async with asyncio.timeout(60):
        while acknowledged < 200:
            line = await child.stdout.readline()
            assert line, "child exited early"
            acknowledged = int(line)
    os.kill(child.pid, signal.SIGKILL)
    assert await child.wait() == -signal.SIGKILL

    store = SqliteStore(path)
    await store.open()
    try:
        uuids = {r.uuid for r in await store.list_routes()}
        assert [n.key for n in await store.list_nodes()] == ["n:1"]
    finally:
        await store.close()
    assert {f"u{i}" for i in range(acknowledged + 1)} <= uuids
