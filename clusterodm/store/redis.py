"""RedisStore: the Store in one Redis database, the state several proxy instances can share.

Selected by ``--store redis://host:6379/0`` (or ``rediss://`` for TLS). Imports only ``model``,
``errors``, ``codec``, the standard library and, lazily, redis-py (the ``redis`` extra); never a
use case or the edge. docs/scale-out.md describes the layout for operators.

Key layout, every key under one prefix (``clusterodm:`` unless the URL says ``?prefix=...``, so
two clusters can share one Redis)::

    schema                    string  layout version (SCHEMA_VERSION), checked at open()
    meta                      hash    key -> value
    nodes                     hash    node key -> node record (JSON)
    nodes:order               zset    node key, score = position (kept on update)
    nodes:seq                 string  last position handed out
    routes                    hash    uuid -> {"node_key", "owner"} (JSON)
    routes:accessed           hash    uuid -> accessed_ms (written alone by touch_routes)
    routes:order              zset    uuid, score = insertion sequence (kept on upsert)
    routes:seq                string  last sequence handed out
    routes:by-node:<node key> set     uuids routed to that node (delete_node needs no scan)
    tasks, tasks:order, tasks:seq        the task table, like routes
    uploads, uploads:order, uploads:seq  staged uploads, likewise
    claim:<name>              string  holder's instance id, with an expiry (Coordination)
    places:<pool>             hash    holder -> expiry (ms, Redis clock): reservations
    places                    set     pools that may hold places (``reserved`` needs no scan)
    counters:<name>           hash    key -> "count:round" (decaying counters, e.g. flood)
    counters:<name>:epoch     string  ms of the counter set's first use (rounds count from it)
    queue                     hash    uuid -> {"owner", "images", "seq", "tag"} (fair queue)
    queue:last, queue:virtual, queue:seq  each owner's last tag, the virtual clock, arrivals
    marker                    string  identity stamp; missing after Redis lost its data
    events                    channel pub/sub notices between instances (Coordination)

Atomicity: an upsert must read before it writes (keep the position, move the uuid between
by-node sets), so those steps are Lua scripts, which Redis runs as one unit with nothing in
between, without WATCH retry loops. Plain multi-key reads and deletes are MULTI/EXEC
pipelines. Bulk writes (``put_routes``, ``touch_routes``) send the script in chunks of JSON
inside one MULTI/EXEC: one round trip, one atomic step, few arguments to encode. Lists are read
by a script that answers one JSON text, so 100k routes are one reply to parse, not 300k.
Scripts name keys they compute (the by-node set of a route's previous node), so this layout is
for a single Redis (with replicas or Sentinel), not Redis Cluster.

Failures: every call has a connect and a read timeout, and a broken connection is retried once
on a fresh one (a restarted Redis is picked up by the next call). Errors become ``StoreError`` in
``_call`` only: ``State store unavailable`` when Redis cannot be reached, so a request that needs
the store gets a clear answer in seconds instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from clusterodm.compat import cancel_requested
from clusterodm.errors import StoreError
from clusterodm.model import Node, Route, StagedUpload, TaskEntry, TaskStage, Waiting
from clusterodm.store import codec

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
"""Version of the key layout above; a store written by a newer release is refused."""

DEFAULT_PREFIX = "clusterodm:"
SCHEMES = ("redis://", "rediss://")
EVENT_POLL_S = 1.0
"""How long one wait for a pub/sub notice lasts (the listener's read timeout stays bounded)."""
BATCH = 5000
"""Routes per script call inside one bulk MULTI/EXEC: bounds each call's argument list."""


@dataclass(frozen=True, slots=True)
class RedisLimits:
    """Bounds on every Redis call, so a dead or unreachable Redis fails fast."""

    connect_s: float = 5.0  # TCP (and TLS) connect
    read_s: float = 10.0  # each reply (a 100k-route list is one); also waiting for a connection
    retries: int = 1  # a broken connection is retried this often on a fresh one
    max_connections: int = 64


DEFAULT_LIMITS = RedisLimits()


# KEYS[1] hash, KEYS[2] order zset, KEYS[3] seq; ARGV[1] id, ARGV[2] record
_PUT_ORDERED = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS[1] hash, KEYS[2] order zset. Returns the records in order as one JSON array text: one
# reply to parse instead of one per entry (100k routes parse in milliseconds, hiredis or not).
_LIST_ORDERED = """
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local out = {}
for first = 1, #ids, 1000 do
    local records = redis.call('HMGET', KEYS[1], unpack(ids, first, math.min(first + 999, #ids)))
    for _, record in ipairs(records) do
        if record then out[#out + 1] = record end
    end
end
return '[' .. table.concat(out, ',') .. ']'
"""

# KEYS[1] routes, KEYS[2] routes:accessed, KEYS[3] routes:order.
# Returns one flat JSON array text: record, accessed_ms, record, accessed_ms, ...
_LIST_ROUTES = """
local ids = redis.call('ZRANGE', KEYS[3], 0, -1)
local out = {}
for first = 1, #ids, 1000 do
    local last = math.min(first + 999, #ids)
    local records = redis.call('HMGET', KEYS[1], unpack(ids, first, last))
    local accessed = redis.call('HMGET', KEYS[2], unpack(ids, first, last))
    for i = 1, last - first + 1 do
        if records[i] then
            local n = #out
            out[n + 1] = records[i]
            out[n + 2] = accessed[i] or '0'
        end
    end
end
return '[' .. table.concat(out, ',') .. ']'
"""

# KEYS[1] routes, KEYS[2] routes:accessed, KEYS[3] routes:order, KEYS[4] routes:seq
# ARGV[1] by-node key prefix, ARGV[2] JSON [[uuid, node key, record, accessed_ms], ...] with
# unique uuids and every value a string (Lua numbers would print 1.7e+12).
# Works in slices of 1000 so every command is variadic: a few calls per slice, not per route.
_PUT_ROUTES = """
local by_node = ARGV[1]
local batch = cjson.decode(ARGV[2])
local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
for first = 1, #batch, 1000 do
    local last = math.min(first + 999, #batch)
    local uuids = {}
    for i = first, last do uuids[#uuids + 1] = batch[i][1] end
    local olds = redis.call('HMGET', KEYS[1], unpack(uuids))
    local records, accessed, order, added, removed = {}, {}, {}, {}, {}
    for i = first, last do
        local uuid, node = batch[i][1], batch[i][2]
        local old = olds[i - first + 1]
        if old then
            local old_node = cjson.decode(old)['node_key']
            if old_node ~= node then
                removed[old_node] = removed[old_node] or {}
                table.insert(removed[old_node], uuid)
            end
        else
            seq = seq + 1
            order[#order + 1] = seq
            order[#order + 1] = uuid
        end
        records[#records + 1] = uuid
        records[#records + 1] = batch[i][3]
        accessed[#accessed + 1] = uuid
        accessed[#accessed + 1] = batch[i][4]
        added[node] = added[node] or {}
        table.insert(added[node], uuid)
    end
    redis.call('HSET', KEYS[1], unpack(records))
    redis.call('HSET', KEYS[2], unpack(accessed))
    if #order > 0 then redis.call('ZADD', KEYS[3], 'NX', unpack(order)) end
    for node, ids in pairs(removed) do redis.call('SREM', by_node .. node, unpack(ids)) end
    for node, ids in pairs(added) do redis.call('SADD', by_node .. node, unpack(ids)) end
end
redis.call('SET', KEYS[4], string.format('%d', seq))
return 1
"""

# KEYS[1] routes, KEYS[2] routes:accessed; ARGV[1] JSON [[uuid, accessed_ms], ...] (strings)
_TOUCH_ROUTES = """
local batch = cjson.decode(ARGV[1])
for first = 1, #batch, 1000 do
    local last = math.min(first + 999, #batch)
    local uuids = {}
    for i = first, last do uuids[#uuids + 1] = batch[i][1] end
    local present = redis.call('HMGET', KEYS[1], unpack(uuids))
    local accessed = {}
    for i = first, last do
        if present[i - first + 1] then
            accessed[#accessed + 1] = batch[i][1]
            accessed[#accessed + 1] = batch[i][2]
        end
    end
    if #accessed > 0 then redis.call('HSET', KEYS[2], unpack(accessed)) end
end
return 1
"""

# KEYS[1] routes, KEYS[2] routes:accessed, KEYS[3] routes:order
# ARGV[1] by-node key prefix, ARGV[2] uuid
_DELETE_ROUTE = """
local old = redis.call('HGET', KEYS[1], ARGV[2])
if old then
    redis.call('SREM', ARGV[1] .. cjson.decode(old)['node_key'], ARGV[2])
    redis.call('HDEL', KEYS[1], ARGV[2])
    redis.call('HDEL', KEYS[2], ARGV[2])
    redis.call('ZREM', KEYS[3], ARGV[2])
end
return 1
"""

# KEYS[1] nodes, KEYS[2] nodes:order, KEYS[3] routes, KEYS[4] routes:accessed,
# KEYS[5] routes:order, KEYS[6] the node's by-node set; ARGV[1] node key
_DELETE_NODE = """
local uuids = redis.call('SMEMBERS', KEYS[6])
for first = 1, #uuids, 1000 do
    local last = math.min(first + 999, #uuids)
    redis.call('HDEL', KEYS[3], unpack(uuids, first, last))
    redis.call('HDEL', KEYS[4], unpack(uuids, first, last))
    redis.call('ZREM', KEYS[5], unpack(uuids, first, last))
end
redis.call('DEL', KEYS[6])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return #uuids
"""

# KEYS[1] claim key; ARGV[1] owner, ARGV[2] ttl in ms. Take a free key or extend our own.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

# KEYS[1] claim key; ARGV[1] owner. Delete only our own claim, never a successor's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Redis's own clock in ms, so instances whose clocks differ agree on every expiry.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] places:<pool>, KEYS[2] places (index); ARGV[1] pool, ARGV[2] holder, ARGV[3] capacity,
# ARGV[4] hold ms. Lapsed places are dropped, then the count is checked and the place taken.
_RESERVE = (
    _NOW_MS
    + """
local all = redis.call('HGETALL', KEYS[1])
local live, mine = 0, false
for i = 1, #all, 2 do
    if tonumber(all[i + 1]) <= now then
        redis.call('HDEL', KEYS[1], all[i])
    else
        live = live + 1
        if all[i] == ARGV[2] then mine = true end
    end
end
if not mine and live >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], string.format('%d', now + tonumber(ARGV[4])))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS[1] places:<pool>; ARGV[1] holder, ARGV[2] linger ms (0: give back at once)
_UNRESERVE = (
    _NOW_MS
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if tonumber(ARGV[2]) > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[2])))
else
    redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""
)

# KEYS[1] places (index); ARGV[1] places: key prefix. Answers pool, count, pool, count, ...
_RESERVED = (
    _NOW_MS
    + """
local out = {}
for _, pool in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local key = ARGV[1] .. pool
    local all = redis.call('HGETALL', key)
    local live = 0
    for i = 1, #all, 2 do
        if tonumber(all[i + 1]) <= now then
            redis.call('HDEL', key, all[i])
        else
            live = live + 1
        end
    end
    if live == 0 then
        redis.call('SREM', KEYS[1], pool)
    else
        out[#out + 1] = pool
        out[#out + 1] = live
    end
end
return out
"""
)

# KEYS[1] counters:<name>, KEYS[2] counters:<name>:epoch; ARGV[1] key, ARGV[2] delta,
# ARGV[3] now ms, ARGV[4] every ms, ARGV[5] factor. The rule of ``LocalCounting.count``.
_COUNT = """
local now, every = tonumber(ARGV[3]), tonumber(ARGV[4])
local epoch = tonumber(redis.call('GET', KEYS[2]) or '')
if not epoch then
    epoch = now
    redis.call('SET', KEYS[2], ARGV[3])
end
local current = math.max(0, math.floor((now - epoch) / every))
local value, seen = 0, current
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
    local sep = string.find(raw, ':', 1, true)
    value, seen = tonumber(string.sub(raw, 1, sep - 1)), tonumber(string.sub(raw, sep + 1))
end
for _ = 1, math.min(current - seen, 64) do
    value = math.floor(value * tonumber(ARGV[5]))
    if value <= 0 then break end
end
value = math.max(value + tonumber(ARGV[2]), 0)
if value > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], string.format('%d:%d', value, current))
else
    redis.call('HDEL', KEYS[1], ARGV[1])
end
return value
"""

# KEYS[1] queue, KEYS[2] queue:last, KEYS[3] queue:virtual, KEYS[4] queue:seq;
# ARGV[1] uuid, ARGV[2] owner, ARGV[3] images. Start-time fair tags, as tasks/queue.py.
_QUEUE_JOIN = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then return old end
local virtual = tonumber(redis.call('GET', KEYS[3]) or '0')
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local tag = math.max(virtual, last) + 1
redis.call('HSET', KEYS[2], ARGV[2], string.format('%d', tag))
local seq = redis.call('INCR', KEYS[4])
local record = cjson.encode({owner = ARGV[2], images = tonumber(ARGV[3]), seq = seq, tag = tag})
redis.call('HSET', KEYS[1], ARGV[1], record)
return record
"""

# KEYS as _QUEUE_JOIN; ARGV[1] uuid, ARGV[2] '1' when served (moves the virtual clock)
_QUEUE_LEAVE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
    local tag = cjson.decode(old)['tag']
    local virtual = tonumber(redis.call('GET', KEYS[3]) or '0')
    if tag > virtual then redis.call('SET', KEYS[3], string.format('%d', tag)) end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS[1] tasks; ARGV[1] uuid, ARGV[2] record, ARGV[3] JSON list of stages the stored entry
# must be in. The entry exists, so its place in tasks:order is kept.
_PUT_TASK_IF = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local stage = cjson.decode(old)['stage']
for _, allowed in ipairs(cjson.decode(ARGV[3])) do
    if allowed == stage then
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        return 1
    end
end
return 0
"""

# KEYS[1] marker, KEYS[2] schema; ARGV[1] a new marker, ARGV[2] schema version. A missing
# marker means Redis lost its data: a new one is set, and the schema stamp again.
_MARKER = """
local marker = redis.call('GET', KEYS[1])
if marker then return marker end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return ARGV[1]
"""

_SCRIPTS = {
    "reserve": _RESERVE,
    "unreserve": _UNRESERVE,
    "reserved": _RESERVED,
    "count": _COUNT,
    "queue_join": _QUEUE_JOIN,
    "queue_leave": _QUEUE_LEAVE,
    "put_task_if": _PUT_TASK_IF,
    "marker": _MARKER,
    "claim": _CLAIM,
    "release": _RELEASE,
    "put_ordered": _PUT_ORDERED,
    "list_ordered": _LIST_ORDERED,
    "list_routes": _LIST_ROUTES,
    "put_routes": _PUT_ROUTES,
    "touch_routes": _TOUCH_ROUTES,
    "delete_route": _DELETE_ROUTE,
    "delete_node": _DELETE_NODE,
}


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one cluster's state under ``prefix``."""

    prefix: str

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def by_node_prefix(self) -> str:
        return self.prefix + "routes:by-node:"

    def by_node(self, node_key: str) -> str:
        return self.by_node_prefix + node_key

    def data_keys(self) -> list[str]:
        """Every fixed key that holds state (by-node sets are found by their prefix)."""
        names = ["meta", "nodes", "nodes:order", "nodes:seq", "routes", "routes:accessed"]
        names += ["routes:order", "routes:seq"]
        for part in ("tasks", "uploads"):
            names += [part, f"{part}:order", f"{part}:seq"]
        names += ["places", "queue", "queue:last", "queue:virtual", "queue:seq"]
        return [self.key(n) for n in names]

    def dynamic_prefixes(self) -> list[str]:
        """Prefixes of keys named after their content (found by a scan when clearing)."""
        return [self.by_node_prefix, self.prefix + "places:", self.prefix + "counters:"]


def split_url(url: str) -> tuple[str, str]:
    """``redis://h:p/db?prefix=x:&...`` -> (URL for redis-py, prefix); refuses other schemes."""
    if not url.startswith(SCHEMES):
        raise StoreError(f"not a Redis URL (redis:// or rediss://): {redact(url)}")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [v for k, v in query if k == "prefix"]
    rest = [(k, v) for k, v in query if k != "prefix"]
    prefix = prefixes[-1] if prefixes else DEFAULT_PREFIX
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _route_record(route: Route) -> str:
    """A route without ``accessed_ms``, which lives in ``routes:accessed`` (touched alone)."""
    return codec.dump_json({"uuid": route.uuid, "node_key": route.node_key, "owner": route.owner})


def _route_from(record: dict[str, Any], accessed: Any) -> Route:
    return Route(record["uuid"], record["node_key"], record["owner"], int(accessed or 0))


def _waiting_from(uuid: str, record: dict[str, Any]) -> Waiting:
    return Waiting(
        uuid, str(record["owner"]), int(record["images"]), int(record["seq"]), float(record["tag"])
    )


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RedisStore:
    """Store backed by one Redis database; see the module docstring for layout and failures.

    Also the ``Coordination`` of several proxy instances sharing it (``shared`` is True).
    """

    shared = True

    def __init__(
        self, url: str, prefix: str | None = None, limits: RedisLimits = DEFAULT_LIMITS
    ) -> None:
        self._url, url_prefix = split_url(url)
        self.prefix = url_prefix if prefix is None else prefix
        if not self.prefix:
            raise StoreError("the Redis key prefix must not be empty")
        self.location = redact(self._url)
        self.keys = Keys(self.prefix)
        self.limits = limits
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._unavailable: tuple[type[BaseException], ...] = (OSError,)
        self._failed: tuple[type[BaseException], ...] = ()

    # --- lifecycle ---

    async def open(self) -> None:
        """Connect, check Redis answers, stamp or check the layout version."""
        if self._client is not None:
            return
        self._client = self._connect()
        try:
            await self._call(self._check_schema)
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> Redis:
        try:
            from redis import exceptions
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff
        except ImportError as exc:
            raise StoreError(
                "the Redis store needs the redis package: install clusterodm[redis]"
            ) from exc
        self._unavailable = (exceptions.ConnectionError, exceptions.TimeoutError, OSError)
        self._failed = (exceptions.RedisError,)
        limits = self.limits
        try:
            pool = BlockingConnectionPool.from_url(
                self._url,
                decode_responses=True,
                socket_connect_timeout=limits.connect_s,
                socket_timeout=limits.read_s,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), limits.retries),
                max_connections=limits.max_connections,
                timeout=limits.read_s,
            )
        except ValueError as exc:
            raise StoreError(f"bad Redis URL {self.location}: {exc}") from exc
        client = Redis.from_pool(pool)
        self._scripts = {name: client.register_script(lua) for name, lua in _SCRIPTS.items()}
        return client

    async def _check_schema(self, r: Redis) -> None:
        key = self.keys.key("schema")
        await r.set(key, SCHEMA_VERSION, nx=True)
        raw = _text(await r.get(key))
        try:
            version = int(raw or "")
        except ValueError:
            raise StoreError(f"state store schema version {raw!r} at {key} is unreadable") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state store schema version {version} is newer than this release "
                f"understands ({SCHEMA_VERSION}); upgrade clusterodm"
            )

    async def close(self) -> None:
        """Close the pool; later calls raise ``StoreError``. Redis keeps the data."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def schema_version(self) -> int:
        """The layout version stored in Redis (for diagnostics and tests)."""

        async def read(r: Redis) -> int:
            return int(await r.get(self.keys.key("schema")) or 0)

        return await self._call(read)

    # --- nodes ---

    async def list_nodes(self) -> list[Node]:
        return await self._list("nodes", codec.node_from_record)

    async def put_node(self, node: Node) -> None:
        await self._put_ordered("nodes", node.key, lambda: codec.node_record(node))

    async def delete_node(self, key: str) -> None:
        """The node and its routes go in one script: no route is left pointing nowhere."""
        k = self.keys
        keys = [k.key("nodes"), k.key("nodes:order"), k.key("routes"), k.key("routes:accessed")]
        keys += [k.key("routes:order"), k.by_node(key)]
        await self._call(lambda r: self._scripts["delete_node"](keys=keys, args=[key]))

    # --- routes ---

    async def get_route(self, uuid: str) -> Route | None:
        async def read(r: Redis) -> Route | None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hget(self.keys.key("routes"), uuid)
                pipe.hget(self.keys.key("routes:accessed"), uuid)
                record, accessed = await pipe.execute()
            return None if record is None else _route_from(json.loads(record), accessed)

        return await self._call(read)

    async def put_route(self, route: Route) -> None:
        await self.put_routes([route])

    async def put_routes(self, routes: Iterable[Route]) -> None:
        """Insert or update in one MULTI/EXEC; every value is encoded before anything is sent.

        A uuid given twice keeps its first place and its last values, as SQLite's upserts do.
        """
        latest = {route.uuid: route for route in routes}
        if not latest:
            return
        k = self.keys
        keys = [k.key("routes"), k.key("routes:accessed"), k.key("routes:order")]
        keys.append(k.key("routes:seq"))

        async def write(r: Redis) -> None:
            rows = [
                [route.uuid, route.node_key, _route_record(route), str(int(route.accessed_ms))]
                for route in latest.values()
            ]
            script = self._scripts["put_routes"]
            async with r.pipeline(transaction=True) as pipe:
                for chunk in _chunks(rows, BATCH):
                    args = [k.by_node_prefix, codec.dump_json(chunk)]
                    await script(keys=keys, args=args, client=pipe)
                await pipe.execute()

        await self._call(write)

    async def delete_route(self, uuid: str) -> None:
        k = self.keys
        keys = [k.key("routes"), k.key("routes:accessed"), k.key("routes:order")]
        await self._call(
            lambda r: self._scripts["delete_route"](keys=keys, args=[k.by_node_prefix, uuid])
        )

    async def list_routes(self) -> list[Route]:
        """All routes, oldest first, read by one script so the three keys agree."""
        k = self.keys
        keys = [k.key("routes"), k.key("routes:accessed"), k.key("routes:order")]

        async def read(r: Redis) -> list[Route]:
            flat = json.loads(await self._scripts["list_routes"](keys=keys))
            pairs = zip(flat[::2], flat[1::2], strict=True)
            return [_route_from(record, accessed) for record, accessed in pairs]

        return await self._call(read)

    async def touch_routes(self, accessed: Iterable[tuple[str, int]]) -> None:
        """Unknown uuids are skipped: the route may have been deleted meanwhile."""
        rows = [[uuid, str(int(accessed_ms))] for uuid, accessed_ms in accessed]
        if not rows:
            return
        keys = [self.keys.key("routes"), self.keys.key("routes:accessed")]

        async def write(r: Redis) -> None:
            script = self._scripts["touch_routes"]
            async with r.pipeline(transaction=True) as pipe:
                for chunk in _chunks(rows, BATCH):
                    await script(keys=keys, args=[codec.dump_json(chunk)], client=pipe)
                await pipe.execute()

        await self._call(write)

    # --- task table ---

    async def get_task(self, uuid: str) -> TaskEntry | None:
        return await self._get("tasks", uuid, codec.task_from_record)

    async def put_task(self, task: TaskEntry) -> None:
        await self._put_ordered("tasks", task.uuid, lambda: codec.task_record(task))

    async def put_task_if(self, task: TaskEntry, stages: tuple[TaskStage, ...]) -> bool:
        keys = [self.keys.key("tasks")]

        async def write(r: Redis) -> bool:
            record = codec.dump_json(codec.task_record(task))
            allowed = codec.dump_json([s.value for s in stages])
            script = self._scripts["put_task_if"]
            return bool(await script(keys=keys, args=[task.uuid, record, allowed]))

        return await self._call(write)

    async def delete_task(self, uuid: str) -> None:
        await self._delete_ordered("tasks", uuid)

    async def list_tasks(self) -> list[TaskEntry]:
        return await self._list("tasks", codec.task_from_record)

    # --- staged uploads ---

    async def get_upload(self, uuid: str) -> StagedUpload | None:
        return await self._get("uploads", uuid, codec.upload_from_record)

    async def put_upload(self, upload: StagedUpload) -> None:
        await self._put_ordered("uploads", upload.uuid, lambda: codec.upload_record(upload))

    async def delete_upload(self, uuid: str) -> None:
        await self._delete_ordered("uploads", uuid)

    async def list_uploads(self) -> list[StagedUpload]:
        return await self._list("uploads", codec.upload_from_record)

    # --- meta ---

    async def get_meta(self, key: str) -> str | None:
        async def read(r: Redis) -> str | None:
            return _text(await r.hget(self.keys.key("meta"), key))

        return await self._call(read)

    async def set_meta(self, key: str, value: str) -> None:
        await self._call(lambda r: r.hset(self.keys.key("meta"), key, value))

    async def delete_meta(self, key: str) -> None:
        await self._call(lambda r: r.hdel(self.keys.key("meta"), key))

    async def list_meta(self, prefix: str = "") -> dict[str, str]:
        async def read(r: Redis) -> dict[str, str]:
            meta = await r.hgetall(self.keys.key("meta"))
            pairs = ((str(_text(k)), str(_text(v))) for k, v in meta.items())
            return {k: v for k, v in pairs if k.startswith(prefix)}

        return await self._call(read)

    # --- counting shared by every instance ---

    async def reserve(self, pool: str, holder: str, capacity: int, hold_ms: int) -> bool:
        keys = [self.keys.key("places:" + pool), self.keys.key("places")]
        args = [pool, holder, str(int(capacity)), str(int(hold_ms))]
        return bool(await self._call(lambda r: self._scripts["reserve"](keys=keys, args=args)))

    async def unreserve(self, pool: str, holder: str, linger_ms: int = 0) -> None:
        keys, args = [self.keys.key("places:" + pool)], [holder, str(int(linger_ms))]
        await self._call(lambda r: self._scripts["unreserve"](keys=keys, args=args))

    async def reserved(self) -> dict[str, int]:
        keys, args = [self.keys.key("places")], [self.keys.key("places:")]

        async def read(r: Redis) -> dict[str, int]:
            flat = await self._scripts["reserved"](keys=keys, args=args)
            return {str(_text(p)): int(n) for p, n in zip(flat[::2], flat[1::2], strict=True)}

        return await self._call(read)

    async def count(
        self, name: str, key: str, delta: int, now_ms: int, every_ms: int, factor: float
    ) -> int:
        keys = [self.keys.key("counters:" + name), self.keys.key(f"counters:{name}:epoch")]
        args = [key, str(int(delta)), str(int(now_ms)), str(int(every_ms)), repr(float(factor))]
        return int(await self._call(lambda r: self._scripts["count"](keys=keys, args=args)))

    def _queue_keys(self) -> list[str]:
        return [self.keys.key(n) for n in ("queue", "queue:last", "queue:virtual", "queue:seq")]

    async def queue_join(self, uuid: str, owner: str, images: int) -> Waiting:
        keys, args = self._queue_keys(), [uuid, owner, str(int(images))]

        async def write(r: Redis) -> Waiting:
            record = await self._scripts["queue_join"](keys=keys, args=args)
            return _waiting_from(uuid, json.loads(record))

        return await self._call(write)

    async def queue_leave(self, uuid: str, served: bool) -> None:
        keys, args = self._queue_keys(), [uuid, "1" if served else "0"]
        await self._call(lambda r: self._scripts["queue_leave"](keys=keys, args=args))

    async def queue_list(self) -> list[Waiting]:
        async def read(r: Redis) -> list[Waiting]:
            entries = await r.hgetall(self.keys.key("queue"))
            return [_waiting_from(str(_text(u)), json.loads(v)) for u, v in entries.items()]

        return await self._call(read)

    async def marker(self) -> str:
        keys = [self.keys.key("marker"), self.keys.key("schema")]
        args = [secrets.token_hex(8), str(SCHEMA_VERSION)]
        return str(await self._call(lambda r: self._scripts["marker"](keys=keys, args=args)))

    # --- coordination between instances ---

    def claim_key(self, name: str) -> str:
        return self.keys.key("claim:" + name)

    async def claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        keys, args = [self.claim_key(key)], [owner, str(int(ttl_ms))]
        return bool(await self._call(lambda r: self._scripts["claim"](keys=keys, args=args)))

    async def release(self, key: str, owner: str) -> None:
        keys = [self.claim_key(key)]
        await self._call(lambda r: self._scripts["release"](keys=keys, args=[owner]))

    async def holders(self, keys: list[str]) -> list[str | None]:
        if not keys:
            return []

        async def read(r: Redis) -> list[str | None]:
            return [_text(v) for v in await r.mget([self.claim_key(k) for k in keys])]

        return await self._call(read)

    async def publish(self, event: str) -> None:
        await self._call(lambda r: r.publish(self.keys.key("events"), event))

    async def events(self) -> AsyncIterator[str]:
        """Subscribe to ``events``; an empty string first, once subscribed, so a listener
        re-reads what it may have missed. Ends with ``StoreError`` when Redis goes away."""
        client = self._client
        if client is None:
            raise StoreError("state store is not open")
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            try:
                await pubsub.subscribe(self.keys.key("events"))
                yield ""
                while True:
                    message = await pubsub.get_message(timeout=EVENT_POLL_S)
                    _cancelled_as(None)  # a cancel taken for the poll's timeout answers None
                    if message is not None and message.get("type") == "message":
                        yield str(_text(message["data"]) or "")
            except self._unavailable as exc:
                _cancelled_as(exc)
                raise StoreError(f"State store unavailable ({self.location}): {exc}") from exc
            except self._failed as exc:
                raise StoreError(f"state store failed: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # --- whole-store operations (migration) ---

    async def is_empty(self) -> bool:
        """True when no node, route, task, upload or meta entry is stored under the prefix."""
        names = [self.keys.key(n) for n in ("meta", "nodes", "routes", "tasks", "uploads")]
        count: int = await self._call(lambda r: r.exists(*names))
        return count == 0

    async def clear(self) -> None:
        """Delete every key of this prefix's state (the schema stamp stays)."""

        async def wipe(r: Redis) -> None:
            doomed = self.keys.data_keys()
            for prefix in self.keys.dynamic_prefixes():
                pattern = _glob_escape(prefix) + "*"
                doomed += [key async for key in r.scan_iter(match=pattern, count=1000)]
            async with r.pipeline(transaction=True) as pipe:
                for chunk in _chunks(doomed, 1000):
                    pipe.delete(*chunk)
                await pipe.execute()

        await self._call(wipe)

    # --- plumbing ---

    async def _put_ordered(
        self, part: str, ident: str, encode: Callable[[], dict[str, Any]]
    ) -> None:
        """Upsert keeping the entry's place; ``encode`` runs inside ``_call`` (errors mapped)."""
        keys = [self.keys.key(part), self.keys.key(f"{part}:order"), self.keys.key(f"{part}:seq")]

        async def write(r: Redis) -> None:
            record = codec.dump_json(encode())
            await self._scripts["put_ordered"](keys=keys, args=[ident, record])

        await self._call(write)

    async def _delete_ordered(self, part: str, ident: str) -> None:
        async def delete(r: Redis) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hdel(self.keys.key(part), ident)
                pipe.zrem(self.keys.key(f"{part}:order"), ident)
                await pipe.execute()

        await self._call(delete)

    async def _get(self, part: str, ident: str, decode: Callable[[dict[str, Any]], T]) -> T | None:
        async def read(r: Redis) -> T | None:
            record = _text(await r.hget(self.keys.key(part), ident))
            return None if record is None else decode(json.loads(record))

        return await self._call(read)

    async def _list(self, part: str, decode: Callable[[dict[str, Any]], T]) -> list[T]:
        """The records of ``part`` in their order, read by one script (one atomic step)."""
        keys = [self.keys.key(part), self.keys.key(f"{part}:order")]

        async def read(r: Redis) -> list[T]:
            text = await self._scripts["list_ordered"](keys=keys)
            return [decode(record) for record in json.loads(text)]

        return await self._call(read)

    async def _call(self, work: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``work`` on the client; the one place where Redis errors become ``StoreError``."""
        client = self._client
        if client is None:
            raise StoreError("state store is not open")
        try:
            return await work(client)
        except StoreError:
            raise
        except self._unavailable as exc:
            _cancelled_as(exc)
            raise StoreError(f"State store unavailable ({self.location}): {exc}") from exc
        except self._failed as exc:
            raise StoreError(f"state store failed: {exc}") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"state store holds or was given unusable data: {exc!r}") from exc


def _cancelled_as(exc: BaseException | None) -> None:
    """redis-py may report a cancelled read as a connection error; raise the cancellation
    instead, or a loop that handles ``StoreError`` would run on after being cancelled."""
    if cancel_requested():
        raise asyncio.CancelledError from exc


def _text(value: bytes | str | None) -> str | None:
    """Replies are decoded (``decode_responses``); this satisfies the bytes-or-str typing."""
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """Escape Redis glob characters so a prefix matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
