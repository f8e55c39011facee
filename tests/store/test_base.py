"""The Store protocol's behaviour, run against every backend (``backend`` in conftest.py).

Round trips, ordering, atomic steps, reopening, concurrency and bulk speed. Backend-only matters
(SQLite's file and crash survival, Redis's key layout and outages) are in test_sqlite.py and
test_redis.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib

import pytest

from clusterodm.errors import StoreError
from clusterodm.model import Node, NodeInfo, Route, StagedUpload, TaskEntry, TaskStage, TaskStatus
from clusterodm.store import redis as redis_store
from clusterodm.store import sqlite as sqlite_store
from clusterodm.store.base import Store
from tests.helpers import eventually
from tests.store.conftest import StoreFactory


def expected_schema(store: Store) -> int:
    if isinstance(store, sqlite_store.SqliteStore):
        return sqlite_store.SCHEMA_VERSION
    return redis_store.SCHEMA_VERSION


async def schema_version(store: Store) -> int:
    assert isinstance(store, sqlite_store.SqliteStore | redis_store.RedisStore)
    return await store.schema_version()


INFO = NodeInfo.from_json(
    {"version": "2.2.4", "taskQueueCount": 1, "maxParallelTasks": 2, "maxImages": None}
)


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


async def test_node_round_trip(store: Store) -> None:
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


async def test_nodes_keep_insertion_order_and_position_on_update(store: Store) -> None:
    for port in (3001, 3002, 3003):
        await store.put_node(Node("h", port))
    await store.put_node(Node("h", 3001, locked=True, token="t"))
    nodes = await store.list_nodes()
    assert [n.port for n in nodes] == [3001, 3002, 3003]
    assert nodes[0].locked and nodes[0].token == "t"


async def test_delete_node_removes_its_routes_only(store: Store) -> None:
    a, b = Node("a", 1), Node("b", 2)
    await store.put_node(a)
    await store.put_node(b)
    await store.put_routes([Route("u1", a.key), Route("u2", b.key), Route("u3", a.key)])
    await store.delete_node(a.key)
    assert [n.key for n in await store.list_nodes()] == [b.key]
    assert [r.uuid for r in await store.list_routes()] == ["u2"]
    await store.put_node(Node("c", 3))
    assert [n.key for n in await store.list_nodes()] == [b.key, "c:3"]


async def test_route_round_trip_update_and_delete(store: Store) -> None:
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


async def test_list_routes_oldest_first_even_after_update(store: Store) -> None:
    for name in ("c", "a", "b"):
        await store.put_route(Route(name, "n:1"))
    await store.put_route(Route("c", "n:2"))
    assert [r.uuid for r in await store.list_routes()] == ["c", "a", "b"]


async def test_touch_routes_batch(store: Store) -> None:
    await store.put_routes([Route("u1", "n:1", accessed_ms=1), Route("u2", "n:1", accessed_ms=1)])
    await store.touch_routes([("u1", 100), ("u2", 200), ("gone", 300)])
    await store.touch_routes([])
    assert {r.uuid: r.accessed_ms for r in await store.list_routes()} == {"u1": 100, "u2": 200}


async def test_task_round_trip_update_delete(store: Store) -> None:
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


async def test_upload_round_trip_update_delete(store: Store) -> None:
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


async def test_meta(store: Store) -> None:
    assert await store.get_meta("k") is None
    await store.set_meta("k", "1")
    await store.set_meta("k", "2")
    assert await store.get_meta("k") == "2"


async def test_unserialisable_value_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.put_task(make_task("t1", fields={"bad": object()}))
    assert await store.get_task("t1") is None


async def test_put_routes_is_one_transaction(store: Store) -> None:
    unbindable = Route("u2", "n:1", owner=object())  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.put_routes([Route("u1", "n:1"), unbindable])
    assert await store.list_routes() == []


async def test_closed_store_raises_store_error(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(StoreError):
        await store.list_nodes()
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.put_route(Route("u", "n:1"))


async def test_reopen_keeps_everything(make_store: StoreFactory) -> None:
    first = make_store()
    await first.open()
    await first.put_node(Node("a", 1, info=INFO))
    await first.put_node(Node("b", 2, locked=True))
    await first.put_route(Route("u1", "a:1", "tok", 9))
    await first.put_task(make_task("t1"))
    await first.put_upload(StagedUpload("s1", "tok", {}, [], 1, 1, ("x.jpg",)))
    await first.set_meta("legacy_imported", "yes")
    await first.close()

    second = make_store()
    await second.open()
    try:
        assert [n.key for n in await second.list_nodes()] == ["a:1", "b:2"]
        assert (await second.list_nodes())[1].locked
        assert await second.get_route("u1") == Route("u1", "a:1", "tok", 9)
        assert await second.get_task("t1") == make_task("t1")
        assert (await second.list_uploads())[0].files == ("x.jpg",)
        assert await second.get_meta("legacy_imported") == "yes"
        assert await schema_version(second) == expected_schema(second)
    finally:
        await second.close()


async def test_concurrent_puts_from_many_tasks(store: Store) -> None:
    uuids = [new_uuid() for _ in range(300)]
    async with asyncio.TaskGroup() as group:
        for i, uuid in enumerate(uuids):
            group.create_task(store.put_route(Route(uuid, f"n:{i % 3 + 1}", "tok", i)))
            group.create_task(store.set_meta(f"k{i % 5}", str(i)))
    routes = await store.list_routes()
    assert {r.uuid for r in routes} == set(uuids)
    assert all(r.accessed_ms == uuids.index(r.uuid) for r in routes[:20])


async def test_event_loop_stays_free_during_bulk_write(store: Store) -> None:
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


async def test_100k_routes_bulk_insert_and_load(make_store: StoreFactory, backend: str) -> None:
    routes = [Route(new_uuid(), f"node{i % 10}:3000", "tok", i) for i in range(100_000)]
    store = make_store()
    await store.open()
    started = time.perf_counter()
    await store.put_routes(routes)
    insert_s = time.perf_counter() - started
    await store.close()

    store = make_store()
    await store.open()
    try:
        started = time.perf_counter()
        loaded = await store.list_routes()
        load_s = time.perf_counter() - started
    finally:
        await store.close()
    print(
        f"\n{backend}: 100k routes: bulk insert {insert_s:.3f} s, load at start-up {load_s:.3f} s"
    )
    assert loaded == routes
    # a bound against a pathological load (one round trip per route), not a timing goal:
    # bench/ measures the speed
    assert load_s < 30.0, "sanity bound only; the target is well under 1 s"


async def test_route_moved_to_another_node_goes_with_that_node(store: Store) -> None:
    await store.put_node(Node("a", 1))
    await store.put_node(Node("b", 2))
    await store.put_routes([Route("u1", "a:1"), Route("u2", "a:1")])
    await store.put_route(Route("u1", "b:2", "tok", 7))
    await store.delete_node("a:1")
    assert await store.list_routes() == [Route("u1", "b:2", "tok", 7)]
    await store.delete_route("u1")
    await store.put_route(Route("u1", "a:1"))
    await store.delete_node("b:2")
    assert [r.uuid for r in await store.list_routes()] == ["u1"]


async def test_empty_store_lists_nothing(store: Store) -> None:
    assert await store.list_nodes() == []
    assert await store.list_routes() == []
    assert await store.list_tasks() == []
    assert await store.list_uploads() == []
    await store.put_routes([])
    await store.delete_node("nowhere:1")
    await store.delete_task("none")
    await store.delete_upload("none")
    await store.delete_meta("none")
    assert await store.get_task("none") is None
    assert await store.get_upload("none") is None


async def test_put_routes_same_uuid_twice_keeps_first_place_and_last_values(store: Store) -> None:
    await store.put_route(Route("z", "n:1"))
    await store.put_routes([Route("a", "n:1", "", 1), Route("b", "n:1"), Route("a", "n:2", "t", 2)])
    assert await store.list_routes() == [
        Route("z", "n:1"),
        Route("a", "n:2", "t", 2),
        Route("b", "n:1"),
    ]
    await store.delete_node("n:2")
    assert [r.uuid for r in await store.list_routes()] == ["z", "b"]


# --- counting shared by every instance (one process: in memory; Redis: Lua) ---------------


async def test_put_task_if_writes_only_from_the_expected_stages(store: Store) -> None:
    pending = (TaskStage.COMMITTED, TaskStage.DISPATCHING, TaskStage.QUEUED)
    assert not await store.put_task_if(make_task("a"), pending), "no entry: nothing to update"
    assert await store.get_task("a") is None
    await store.put_task(make_task("a", stage=TaskStage.DISPATCHING))
    await store.put_task(make_task("b"))
    assert await store.put_task_if(make_task("a", stage=TaskStage.QUEUED, attempts=2), pending)
    stored = await store.get_task("a")
    assert stored is not None and stored.stage is TaskStage.QUEUED and stored.attempts == 2
    canceled = make_task("a", stage=TaskStage.FAILED, status=TaskStatus.CANCELED)
    await store.put_task(canceled)
    assert not await store.put_task_if(make_task("a", stage=TaskStage.LANDED), pending)
    assert await store.get_task("a") == canceled, "the cancel is kept"
    assert [t.uuid for t in await store.list_tasks()] == ["a", "b"], "place kept"


async def test_reserve_takes_places_up_to_capacity_atomically(store: Store) -> None:
    taken = await asyncio.gather(*(store.reserve("node:a", f"t{i}", 3, 60_000) for i in range(8)))
    assert sum(taken) == 3, "concurrent takers never exceed the capacity"
    holders = [f"t{i}" for i, ok in enumerate(taken) if ok]
    assert await store.reserve("node:a", holders[0], 1, 60_000), "a holder keeps its place"
    assert await store.reserved() == {"node:a": 3}
    await store.unreserve("node:a", holders[0])
    assert await store.reserved() == {"node:a": 2}
    assert await store.reserve("node:a", "late", 3, 60_000)
    assert not await store.reserve("node:a", "later", 3, 60_000)
    assert await store.reserve("node:b", "x", 1, 60_000), "pools are apart"


async def test_reserved_places_lapse_and_linger(store: Store) -> None:
    assert await store.reserve("p", "dead", 1, 150)
    assert not await store.reserve("p", "other", 1, 60_000)
    await eventually(lambda: store.reserve("p", "other", 1, 60_000), timeout_s=5, message="lapse")
    await store.unreserve("p", "other", linger_ms=150)
    assert await store.reserved() == {"p": 1}, "a lingering place still counts"
    await eventually(lambda: _none_reserved(store), timeout_s=5, message="linger ends")


async def _none_reserved(store: Store) -> bool:
    return await store.reserved() == {}


async def test_decaying_counter_follows_the_flood_rule(store: Store) -> None:
    every, now = 900_000, 1_000_000
    for i in range(1, 12):
        assert await store.count("flood", "a", 1, now, every, 0.66) == i
    assert await store.count("flood", "b", 1, now, every, 0.66) == 1, "keys are apart"
    assert await store.count("flood", "a", 0, now + every, every, 0.66) == 7  # floor(11*0.66)
    assert await store.count("flood", "a", 0, now + 4 * every, every, 0.66) == 1  # 7, 4, 2, 1
    assert await store.count("flood", "a", -5, now + 4 * every, every, 0.66) == 0, "not below 0"
    assert await store.count("other", "a", 0, now, every, 0.66) == 0, "sets are apart"


async def test_queue_is_fair_across_owners_and_keeps_places(store: Store) -> None:
    for uuid, owner in [("a1", "ann"), ("a2", "ann"), ("a3", "ann"), ("b1", "bob")]:
        await store.queue_join(uuid, owner, 5)
    again = await store.queue_join("a2", "ann", 5)
    order = sorted(await store.queue_list(), key=lambda w: (w.tag, w.seq))
    assert [w.uuid for w in order] == ["a1", "b1", "a2", "a3"]
    assert again == next(w for w in order if w.uuid == "a2"), "joining again keeps the place"
    assert order[0].images == 5 and order[0].owner == "ann"
    await store.queue_leave("a1", served=True)
    await store.queue_leave("b1", served=True)
    await store.queue_join("b2", "bob", 1)  # bob was served: behind ann's waiting ones
    order = sorted(await store.queue_list(), key=lambda w: (w.tag, w.seq))
    assert [w.uuid for w in order] == ["a2", "b2", "a3"]
    await store.queue_leave("zz", served=False)
    assert len(await store.queue_list()) == 3


async def test_marker_is_stable_while_the_store_keeps_its_state(store: Store) -> None:
    first = await store.marker()
    assert first and await store.marker() == first


async def test_list_meta_by_prefix(store: Store) -> None:
    await store.set_meta("asr:machine:x", "1")
    await store.set_meta("asr:machine:y", "2")
    await store.set_meta("other", "3")
    assert await store.list_meta("asr:machine:") == {"asr:machine:x": "1", "asr:machine:y": "2"}
    assert len(await store.list_meta()) == 3
