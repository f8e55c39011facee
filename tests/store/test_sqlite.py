"""SqliteStore: round trips, ordering, transactions, restart and crash survival, bulk speed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import clusterodm
from clusterodm.errors import StoreError
from clusterodm.model import Node, NodeInfo, Route, StagedUpload, TaskEntry, TaskStage, TaskStatus
from clusterodm.store.base import Store
from clusterodm.store.sqlite import SCHEMA_VERSION, SqliteStore

INFO = NodeInfo.from_json(
    {"version": "2.2.4", "taskQueueCount": 1, "maxParallelTasks": 2, "maxImages": None}
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "clusterodm.db")
    await s.open()
    yield s
    await s.close()


def make_task(uuid: str, **changes: object) -> TaskEntry:
    values: dict[str, object] = {
        "uuid": uuid,
        "owner": "tok",
        "stage": TaskStage.DISPATCHING,
        "status": TaskStatus.RUNNING,
        "name": "survey",
        "date_created_ms": 1_700_000_000_000,
        "fields": {"name": "survey", "webhook": "http://h/hook"},
        "options": [{"name": "dsm", "value": True}],
        "images_count": 12,
        "output": ("Launching... please wait!",),
        "error_message": None,
        "node_key": "n1:3000",
        "started_ms": 1_700_000_000_500,
        "attempts": 1,
        "progress": 12.5,
    }
    values.update(changes)
    return TaskEntry(**values)  # type: ignore[arg-type]


def new_uuid() -> str:
    return str(uuidlib.uuid4())


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


async def test_node_round_trip(store: SqliteStore) -> None:
    node = Node(
        "10.0.0.5",
        3000,
        token="nodetok",
        locked=True,
        info=INFO,
        last_refreshed_ms=1_700_000_000_000,
        machine={"name": "m-1", "created": 1, "maxRuntime": -1, "maxUploadTime": -1},
    )
    await store.put_node(node)
    [back] = await store.list_nodes()
    assert back == node
    assert back.info is not None and back.info.raw == INFO.raw
    assert back.machine == node.machine


async def test_nodes_keep_insertion_order_and_position_on_update(store: SqliteStore) -> None:
    for port in (3001, 3002, 3003):
        await store.put_node(Node("h", port))
    await store.put_node(Node("h", 3001, locked=True, token="t"))
    nodes = await store.list_nodes()
    assert [n.port for n in nodes] == [3001, 3002, 3003]
    assert nodes[0].locked and nodes[0].token == "t"


async def test_delete_node_removes_its_routes_only(store: SqliteStore) -> None:
    a, b = Node("a", 1), Node("b", 2)
    await store.put_node(a)
    await store.put_node(b)
    await store.put_routes([Route("u1", a.key), Route("u2", b.key), Route("u3", a.key)])
    await store.delete_node(a.key)
    assert [n.key for n in await store.list_nodes()] == [b.key]
    assert [r.uuid for r in await store.list_routes()] == ["u2"]
    await store.put_node(Node("c", 3))
    assert [n.key for n in await store.list_nodes()] == [b.key, "c:3"]


async def test_route_round_trip_update_and_delete(store: SqliteStore) -> None:
    route = Route("u1", "n1:3000", owner="tok", accessed_ms=5)
    await store.put_route(route)
    assert await store.get_route("u1") == route
    assert await store.get_route("missing") is None
    moved = Route("u1", "n2:3000", owner="tok", accessed_ms=6)
    await store.put_route(moved)
    assert await store.get_route("u1") == moved
    await store.delete_route("u1")
    await store.delete_route("u1")
    assert await store.get_route("u1") is None


async def test_list_routes_oldest_first_even_after_update(store: SqliteStore) -> None:
    for name in ("c", "a", "b"):
        await store.put_route(Route(name, "n:1"))
    await store.put_route(Route("c", "n:2"))
    assert [r.uuid for r in await store.list_routes()] == ["c", "a", "b"]


async def test_touch_routes_batch(store: SqliteStore) -> None:
    await store.put_routes([Route("u1", "n:1", accessed_ms=1), Route("u2", "n:1", accessed_ms=1)])
    await store.touch_routes([("u1", 100), ("u2", 200), ("gone", 300)])
    await store.touch_routes([])
    assert {r.uuid: r.accessed_ms for r in await store.list_routes()} == {"u1": 100, "u2": 200}


async def test_task_round_trip_update_delete(store: SqliteStore) -> None:
    task = make_task("t1")
    await store.put_task(task)
    assert await store.get_task("t1") == task
    failed = make_task(
        "t1",
        stage=TaskStage.FAILED,
        status=TaskStatus.FAILED,
        error_message="node gone",
        output=("a", "b"),
        name=None,
        started_ms=None,
        node_key=None,
    )
    await store.put_task(failed)
    await store.put_task(make_task("t2"))
    assert await store.list_tasks() == [failed, make_task("t2")]
    await store.delete_task("t1")
    assert await store.get_task("t1") is None
    assert [t.uuid for t in await store.list_tasks()] == ["t2"]


async def test_upload_round_trip_update_delete(store: SqliteStore) -> None:
    upload = StagedUpload("u1", "tok", {"name": "x"}, [{"name": "dsm", "value": True}], 1, 2)
    await store.put_upload(upload)
    assert await store.get_upload("u1") == upload
    grown = StagedUpload("u1", "tok", {"name": "x"}, [], 1, 3, files=("a.jpg", "b.jpg"))
    await store.put_upload(grown)
    await store.put_upload(StagedUpload("u2", "", {}, [], 4, 4))
    assert [u.uuid for u in await store.list_uploads()] == ["u1", "u2"]
    assert await store.get_upload("u1") == grown
    await store.delete_upload("u1")
    assert await store.get_upload("u1") is None


async def test_meta(store: SqliteStore) -> None:
    assert await store.get_meta("k") is None
    await store.set_meta("k", "1")
    await store.set_meta("k", "2")
    assert await store.get_meta("k") == "2"


async def test_unserialisable_value_is_a_store_error(store: SqliteStore) -> None:
    with pytest.raises(StoreError):
        await store.put_task(make_task("t1", fields={"bad": object()}))
    assert await store.get_task("t1") is None


async def test_put_routes_is_one_transaction(store: SqliteStore) -> None:
    unbindable = Route("u2", "n:1", owner=object())  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.put_routes([Route("u1", "n:1"), unbindable])
    assert await store.list_routes() == []


async def test_closed_store_raises_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    with pytest.raises(StoreError):
        await store.list_nodes()
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.put_route(Route("u", "n:1"))


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "data" / "clusterodm.db"
    first = SqliteStore(path)
    await first.open()
    await first.put_node(Node("a", 1, info=INFO))
    await first.put_node(Node("b", 2, locked=True))
    await first.put_route(Route("u1", "a:1", "tok", 9))
    await first.put_task(make_task("t1"))
    await first.put_upload(StagedUpload("s1", "tok", {}, [], 1, 1, ("x.jpg",)))
    await first.set_meta("legacy_imported", "yes")
    await first.close()

    second = SqliteStore(path)
    await second.open()
    try:
        assert [n.key for n in await second.list_nodes()] == ["a:1", "b:2"]
        assert (await second.list_nodes())[1].locked
        assert await second.get_route("u1") == Route("u1", "a:1", "tok", 9)
        assert await second.get_task("t1") == make_task("t1")
        assert (await second.list_uploads())[0].files == ("x.jpg",)
        assert await second.get_meta("legacy_imported") == "yes"
        assert await second.schema_version() == SCHEMA_VERSION
    finally:
        await second.close()


async def test_concurrent_puts_from_many_tasks(store: SqliteStore) -> None:
    uuids = [new_uuid() for _ in range(300)]
    async with asyncio.TaskGroup() as group:
        for i, uuid in enumerate(uuids):
            group.create_task(store.put_route(Route(uuid, f"n:{i % 3 + 1}", "tok", i)))
            group.create_task(store.set_meta(f"k{i % 5}", str(i)))
    routes = await store.list_routes()
    assert {r.uuid for r in routes} == set(uuids)
    assert all(r.accessed_ms == uuids.index(r.uuid) for r in routes[:20])


async def test_event_loop_stays_free_during_bulk_write(store: SqliteStore) -> None:
    routes = [Route(new_uuid(), "n:1") for _ in range(50_000)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.create_task(ticker())
    try:
        await store.put_routes(routes)
    finally:
        tick_task.cancel()
    assert ticks > 1


async def test_100k_routes_bulk_insert_and_load(tmp_path: Path) -> None:
    path = tmp_path / "bulk.db"
    routes = [Route(new_uuid(), f"node{i % 10}:3000", "tok", i) for i in range(100_000)]
    store = SqliteStore(path)
    await store.open()
    started = time.perf_counter()
    await store.put_routes(routes)
    insert_s = time.perf_counter() - started
    await store.close()

    store = SqliteStore(path)
    await store.open()
    try:
        started = time.perf_counter()
        loaded = await store.list_routes()
        load_s = time.perf_counter() - started
    finally:
        await store.close()
    print(f"\n100k routes: bulk insert {insert_s:.3f} s, load at start-up {load_s:.3f} s")
    assert loaded == routes
    assert load_s < 5.0, "sanity bound only; the target is well under 1 s"


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
