"""SQLite -> Redis migration: everything copied in order, a non-empty target refused, counts."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid as uuidlib
from pathlib import Path

import pytest

import clusterodm
from clusterodm.model import Node, Route, StagedUpload
from clusterodm.store.migrate import main
from clusterodm.store.redis import RedisStore
from clusterodm.store.sqlite import SqliteStore
from tests.redis_server import free_port
from tests.store.test_base import INFO, make_task

REPO_ROOT = Path(clusterodm.__file__).resolve().parent.parent


async def fill_sqlite(data_dir: Path) -> SqliteStore:
    """A closed SQLite store with a bit of everything; nodes added out of name order."""
    store = SqliteStore(data_dir / "clusterodm.db")
    await store.open()
    await store.put_node(Node("zeta", 1, token="nt", info=INFO))
    await store.put_node(Node("alpha", 2, locked=True, machine={"name": "m-1"}))
    await store.put_routes([Route(f"u{i}", "zeta:1", "tok", 1000 + i) for i in range(50)])
    await store.put_route(Route("moved", "alpha:2", "", 7))
    await store.put_task(make_task("t2"))
    await store.put_task(make_task("t1", node_key=None))
    await store.put_upload(StagedUpload("s1", "tok", {"name": "x"}, [], 1, 2, ("a.jpg",)))
    await store.set_meta("legacy_imported", '{"nodes": 0}')
    await store.set_meta("pipeline:abc", "{}")
    await store.close()
    return store


def url_with_prefix(redis_url: str) -> tuple[str, str]:
    prefix = f"m-{uuidlib.uuid4().hex[:8]}:"
    return f"{redis_url}?prefix={prefix}", prefix


async def test_copies_everything_in_order(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = await fill_sqlite(tmp_path)
    url, prefix = url_with_prefix(redis_url)
    assert await asyncio.to_thread(main, ["--data-dir", str(tmp_path), "--to", url]) == 0
    out = capsys.readouterr().out
    assert "2 nodes, 51 routes, 2 tasks, 1 staged uploads, 2 meta entries" in out
    assert prefix in out

    await source.open()
    target = RedisStore(url)
    await target.open()
    try:
        assert await target.list_nodes() == await source.list_nodes()
        assert [n.key for n in await target.list_nodes()] == ["zeta:1", "alpha:2"]
        assert await target.list_routes() == await source.list_routes()
        assert await target.list_tasks() == await source.list_tasks()
        assert [t.uuid for t in await target.list_tasks()] == ["t2", "t1"]
        assert await target.list_uploads() == await source.list_uploads()
        assert await target.list_meta() == {
            "legacy_imported": '{"nodes": 0}',
            "pipeline:abc": "{}",
        }
        await target.delete_node("zeta:1")
        assert [r.uuid for r in await target.list_routes()] == ["moved"]
    finally:
        await target.close()
        await source.close()


async def test_refuses_a_non_empty_target_unless_forced(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill_sqlite(tmp_path)
    url, _ = url_with_prefix(redis_url)
    target = RedisStore(url)
    await target.open()
    try:
        await target.put_route(Route("stale", "gone:1"))
        await target.set_meta("old", "1")
        args = ["--data-dir", str(tmp_path), "--to", url]
        assert await asyncio.to_thread(main, args) == 1
        assert "--force" in capsys.readouterr().err
        assert await target.get_route("stale") is not None

        assert await asyncio.to_thread(main, [*args, "--force"]) == 0
        assert await target.get_route("stale") is None
        assert await target.get_meta("old") is None
        assert len(await target.list_routes()) == 51
    finally:
        await target.close()


async def test_missing_source_and_unreachable_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data-dir", str(tmp_path), "--to", f"redis://127.0.0.1:{free_port()}/0"]
    assert await asyncio.to_thread(main, args) == 1
    assert "no SQLite store" in capsys.readouterr().err
    assert not (tmp_path / "clusterodm.db").exists()
    await fill_sqlite(tmp_path)
    assert await asyncio.to_thread(main, args) == 1
    assert "State store unavailable" in capsys.readouterr().err


async def test_runs_as_a_module(tmp_path: Path, redis_url: str) -> None:
    await fill_sqlite(tmp_path)
    url, _ = url_with_prefix(redis_url)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clusterodm.store.migrate",
        "--data-dir",
        str(tmp_path),
        "--to",
        url,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, _ = await child.communicate()
    assert child.returncode == 0
    assert b"51 routes" in out
