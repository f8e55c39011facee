"""RedisStore: key layout, prefixes, layout version, outages and recovery, URLs, --store wiring.

The behaviour every backend shares is tested against this store in test_base.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from clusterodm.app import build_store
from clusterodm.cli import parse_settings
from clusterodm.config import ConfigError, Settings
from clusterodm.errors import StoreError
from clusterodm.model import Node, Route
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.store.base import Store
from clusterodm.store.redis import (
    DEFAULT_PREFIX,
    SCHEMA_VERSION,
    RedisLimits,
    RedisStore,
    redact,
    split_url,
)
from clusterodm.store.sqlite import SqliteStore
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually
from tests.redis_server import RedisServer, free_port, redis_server_or_skip
from tests.store.test_base import INFO, make_task

FAST = RedisLimits(connect_s=1.0, read_s=1.0)


def prefix() -> str:
    return f"t-{uuidlib.uuid4().hex[:8]}:"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test server, to look at the keys the store writes."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def rstore(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, prefix=prefix())
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server this test may stop and start again."""
    server = redis_server_or_skip()
    yield server
    server.stop()


def test_satisfies_store_protocol() -> None:
    store: Store = RedisStore("redis://127.0.0.1:1/0")
    assert callable(store.put_routes)


async def test_key_layout(rstore: RedisStore, raw: aioredis.Redis) -> None:
    p = rstore.prefix
    await rstore.put_node(Node("a", 1, info=INFO))
    await rstore.put_routes([Route("u1", "a:1", "tok", 5), Route("u2", "b:2")])
    await rstore.put_task(make_task("t1"))
    await rstore.set_meta("k", "v")
    types = {key: await raw.type(key) for key in await raw.keys(p + "*")}
    assert types == {
        p + "schema": "string",
        p + "meta": "hash",
        p + "nodes": "hash",
        p + "nodes:order": "zset",
        p + "nodes:seq": "string",
        p + "routes": "hash",
        p + "routes:accessed": "hash",
        p + "routes:order": "zset",
        p + "routes:seq": "string",
        p + "routes:by-node:a:1": "set",
        p + "routes:by-node:b:2": "set",
        p + "tasks": "hash",
        p + "tasks:order": "zset",
        p + "tasks:seq": "string",
    }
    assert json.loads(await raw.hget(p + "routes", "u1")) == {
        "uuid": "u1",
        "node_key": "a:1",
        "owner": "tok",
    }
    assert await raw.hget(p + "routes:accessed", "u1") == "5"
    node = json.loads(await raw.hget(p + "nodes", "a:1"))
    assert node["info"] == INFO.raw and node["locked"] is False
    task = json.loads(await raw.hget(p + "tasks", "t1"))
    assert task["stage"] == "dispatching" and task["status"] == 20
    assert await raw.get(p + "schema") == str(SCHEMA_VERSION)


async def test_by_node_index_follows_moves_and_deletes(
    rstore: RedisStore, raw: aioredis.Redis
) -> None:
    by_node = rstore.prefix + "routes:by-node:"
    await rstore.put_route(Route("u1", "a:1"))
    await rstore.put_route(Route("u1", "b:2"))
    assert await raw.smembers(by_node + "a:1") == set()
    assert await raw.smembers(by_node + "b:2") == {"u1"}
    await rstore.delete_route("u1")
    assert await raw.exists(by_node + "b:2") == 0


async def test_delete_node_with_many_routes(rstore: RedisStore, raw: aioredis.Redis) -> None:
    await rstore.put_node(Node("a", 1))
    mine = [Route(f"a{i}", "a:1", "", i) for i in range(2500)]
    await rstore.put_routes([*mine, Route("other", "b:2")])
    await rstore.delete_node("a:1")
    assert await rstore.list_routes() == [Route("other", "b:2")]
    p = rstore.prefix
    assert await raw.hlen(p + "routes:accessed") == 1
    assert await raw.zcard(p + "routes:order") == 1
    assert await raw.exists(p + "routes:by-node:a:1") == 0


async def test_touch_skips_unknown_uuids_in_big_batches(
    rstore: RedisStore, raw: aioredis.Redis
) -> None:
    await rstore.put_routes([Route(f"u{i}", "n:1") for i in range(1500)])
    await rstore.touch_routes([(f"u{i}", 10 + i) for i in range(0, 3000, 2)])
    routes = {r.uuid: r.accessed_ms for r in await rstore.list_routes()}
    assert routes["u0"] == 10 and routes["u1498"] == 1508 and routes["u1"] == 0
    assert await raw.hlen(rstore.prefix + "routes:accessed") == 1500


async def test_big_millisecond_values_keep_every_digit(rstore: RedisStore) -> None:
    ms = 1_712_345_678_901
    await rstore.put_routes([Route("u1", "n:1", "tok", ms)])
    await rstore.touch_routes([("u1", ms + 1)])
    assert await rstore.get_route("u1") == Route("u1", "n:1", "tok", ms + 1)


async def test_prefixes_keep_two_clusters_apart(redis_url: str) -> None:
    one, two = RedisStore(redis_url, prefix="one:"), RedisStore(f"{redis_url}?prefix=two:")
    assert two.prefix == "two:"
    for s in (one, two):
        await s.open()
    try:
        await one.put_node(Node("a", 1))
        await two.put_route(Route("u1", "b:2"))
        assert [n.key for n in await one.list_nodes()] == ["a:1"]
        assert await two.list_nodes() == []
        assert await one.get_route("u1") is None
        await one.clear()
        assert await one.is_empty()
        assert not await two.is_empty()
    finally:
        for s in (one, two):
            await s.close()


async def test_clear_meta_and_emptiness(rstore: RedisStore) -> None:
    assert await rstore.is_empty()
    await rstore.set_meta("a", "1")
    await rstore.put_route(Route("u1", "n:1"))
    assert not await rstore.is_empty()
    assert await rstore.list_meta() == {"a": "1"}
    await rstore.clear()
    assert await rstore.is_empty()
    assert await rstore.list_routes() == []
    assert await rstore.schema_version() == SCHEMA_VERSION


async def test_newer_layout_is_refused(redis_url: str, raw: aioredis.Redis) -> None:
    p = prefix()
    await raw.set(p + "schema", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer"):
        await RedisStore(redis_url, prefix=p).open()
    await raw.set(p + "schema", "banana")
    with pytest.raises(StoreError, match="unreadable"):
        await RedisStore(redis_url, prefix=p).open()


async def test_four_stores_opening_at_once(redis_url: str) -> None:
    p = prefix()
    stores = [RedisStore(redis_url, prefix=p) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [SCHEMA_VERSION] * 4
        await stores[0].put_node(Node("a", 1))
        assert [n.key for n in await stores[3].list_nodes()] == ["a:1"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_unreadable_record_is_a_store_error(rstore: RedisStore, raw: aioredis.Redis) -> None:
    await raw.hset(rstore.prefix + "tasks", "t1", "{not json")
    with pytest.raises(StoreError, match="unusable"):
        await rstore.get_task("t1")


async def test_no_redis_at_open_is_a_quick_clear_error() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", limits=FAST)
    started = time.monotonic()
    with pytest.raises(StoreError, match="State store unavailable"):
        await store.open()
    assert time.monotonic() - started < 5.0
    with pytest.raises(StoreError, match="not open"):
        await store.list_nodes()


async def test_redis_going_away_and_coming_back(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, limits=FAST)
    await store.open()
    try:
        await store.put_node(Node("a", 1))
        own_server.stop()
        async with asyncio.timeout(10):
            started = time.monotonic()
            with pytest.raises(StoreError, match="State store unavailable"):
                await store.list_nodes()
            with pytest.raises(StoreError, match="State store unavailable"):
                await store.put_route(Route("u1", "a:1"))
            assert time.monotonic() - started < 5.0
        own_server.start()
        # no persistence in tests: the restarted server is empty, and the same store works on
        await store.put_route(Route("u1", "a:1"))
        assert await store.get_route("u1") == Route("u1", "a:1")
        assert await store.list_nodes() == []
    finally:
        await store.close()


def test_urls_and_prefixes() -> None:
    assert split_url("redis://h:6379/0") == ("redis://h:6379/0", DEFAULT_PREFIX)
    assert split_url("rediss://h/1?prefix=b:&ssl_cert_reqs=none") == (
        "rediss://h/1?ssl_cert_reqs=none",
        "b:",
    )
    assert redact("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact("redis://h/0") == "redis://h/0"
    with pytest.raises(StoreError, match="not a Redis URL"):
        RedisStore("http://h:6379")
    with pytest.raises(StoreError, match="prefix"):
        RedisStore("redis://h/0", prefix="")


async def test_missing_redis_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(StoreError, match=r"install clusterodm\[redis\]"):
        await RedisStore("redis://127.0.0.1:1/0").open()


def test_store_flag_and_config_key(tmp_path: Path) -> None:
    assert parse_settings([]).store == ""
    url = "redis://127.0.0.1:6379/0"
    assert parse_settings(["--store", url]).store == url
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"store": "rediss://h:6380/2"}))
    assert parse_settings(["--config", str(config)]).store == "rediss://h:6380/2"
    with pytest.raises(ConfigError, match="--store") as refused:
        parse_settings(["--store", "postgres://u:pw@h/db"])
    assert "pw" not in refused.value.message


def test_build_store_picks_the_backend(tmp_path: Path) -> None:
    sqlite = build_store(Settings(data_dir=tmp_path))
    assert isinstance(sqlite, SqliteStore) and sqlite.path == tmp_path / "clusterodm.db"
    shared = build_store(Settings(store="redis://h:6379/3?prefix=c2:"))
    assert isinstance(shared, RedisStore) and shared.prefix == "c2:"


async def test_clusters_on_one_redis_share_their_nodes(
    redis_url: str,
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
) -> None:
    node = await simnode_factory()
    url = f"{redis_url}?prefix={prefix()}"
    await cluster_factory([node], store=url, data_dir=tmp_path / "one")
    second = await cluster_factory(store=url, data_dir=tmp_path / "two")
    assert [n.key for n in second.registry.nodes()] == [f"{node.host}:{node.port}"]
    assert not (tmp_path / "two" / "clusterodm.db").exists()


async def test_claims_are_exclusive_renewable_and_expire(rstore: RedisStore) -> None:
    assert await rstore.claim("task:u1", "a", 10_000)
    assert not await rstore.claim("task:u1", "b", 10_000), "held by a"
    assert await rstore.claim("task:u1", "a", 10_000), "the holder renews"
    assert await rstore.holders(["task:u1", "task:u2"]) == ["a", None]
    await rstore.release("task:u1", "b")  # not b's: stays
    assert await rstore.holders(["task:u1"]) == ["a"]
    await rstore.release("task:u1", "a")
    assert await rstore.claim("task:u1", "b", 50)
    await eventually(
        lambda: rstore.claim("task:u1", "c", 10_000), timeout_s=5, message="claim lapsed"
    )
    assert await rstore.holders([]) == []


async def test_events_reach_every_listener(rstore: RedisStore, redis_url: str) -> None:
    other = RedisStore(redis_url, prefix=rstore.prefix)
    await other.open()
    try:
        stream = other.events()
        async with asyncio.timeout(10):
            assert await anext(stream) == "", "subscribed"
            await rstore.publish("nodes")
            assert await anext(stream) == "nodes"
        await stream.aclose()
    finally:
        await other.close()


async def test_events_end_with_a_store_error_when_redis_goes(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, limits=FAST)
    await store.open()
    try:
        stream = store.events()
        async with asyncio.timeout(10):
            assert await anext(stream) == ""
            own_server.stop()
            with pytest.raises(StoreError, match="State store unavailable"):
                await anext(stream)
            with pytest.raises(StoreError, match="State store unavailable"):
                await store.claim("leader", "a", 1000)
    finally:
        await store.close()


async def test_a_node_list_read_before_a_local_add_does_not_drop_the_node(
    rstore: RedisStore,
) -> None:
    """A shared-store round reads the list, then a node is added here, then the round applies
    what it read: the node must stay (a race seen as a node vanishing right after ``add``)."""
    registry = NodeRegistry(rstore)
    seen = registry.generation
    stale = await rstore.list_nodes()
    await registry.add("127.0.0.1", 3001)
    await registry.reload(stale, seen)
    assert [n.key for n in registry.nodes()] == ["127.0.0.1:3001"]
    await registry.reload([], registry.generation)  # a list read after: taken as it is
    assert registry.nodes() == []
