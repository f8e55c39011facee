"""SqliteStore: the default Store, one SQLite file on one dedicated thread.

Owns the schema (versioned with ``PRAGMA user_version``, upgraded by ``MIGRATIONS``) and the
translation between rows and model values (JSON columns encoded by ``codec``, as the Redis store
encodes them). Imports only ``model``, ``errors``, ``codec`` and the standard library; never a use
case or the edge.

Durability: the journal is WAL with ``synchronous=NORMAL``. A committed transaction has been
written to the WAL file (the OS page cache) before ``commit`` returns, so it survives the process
being killed (``kill -9``), which is our requirement. Only an OS crash or power loss may lose the
last few transactions, and even then the file stays consistent. ``FULL`` would add an fsync per
route write (every task) for a guarantee the original, which rewrote JSON files without fsync,
never gave.

Threading: every SQLite call runs on one single-worker executor that also owns the connection,
so the event loop never blocks and SQLite never sees two threads. ``sqlite3.Error`` is turned into
``StoreError`` at this border.

Original: ``data/nodes.json`` and ``data/routes.json`` rewritten whole on every change. Here: one
row per node or route, written in place, so a crash cannot leave an empty file behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from clusterodm.errors import StoreError
from clusterodm.model import Node, Route, StagedUpload, TaskEntry, TaskStage, TaskStatus
from clusterodm.store.codec import dump_json as _dump
from clusterodm.store.codec import info_from_text as _info_from_json
from clusterodm.store.local import LocalCounting

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_FILENAME = "clusterodm.db"
"""The store's file name inside ``--data-dir``."""

BUSY_TIMEOUT_MS = 5000
"""How long a write waits for a lock held by another process (an admin tool, a backup)."""

_SCHEMA_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE nodes (
    key               TEXT PRIMARY KEY,
    position          INTEGER NOT NULL UNIQUE,
    hostname          TEXT NOT NULL,
    port              INTEGER NOT NULL,
    token             TEXT NOT NULL,
    locked            INTEGER NOT NULL,
    info              TEXT,
    last_refreshed_ms INTEGER NOT NULL,
    machine           TEXT
);
CREATE TABLE routes (
    seq         INTEGER PRIMARY KEY,
    uuid        TEXT NOT NULL UNIQUE,
    node_key    TEXT NOT NULL,
    owner       TEXT NOT NULL,
    accessed_ms INTEGER NOT NULL
);
CREATE INDEX routes_node_key ON routes (node_key);
CREATE TABLE tasks (
    seq             INTEGER PRIMARY KEY,
    uuid            TEXT NOT NULL UNIQUE,
    owner           TEXT NOT NULL,
    stage           TEXT NOT NULL,
    status          INTEGER NOT NULL,
    name            TEXT,
    date_created_ms INTEGER NOT NULL,
    fields          TEXT NOT NULL,
    options         TEXT NOT NULL,
    images_count    INTEGER NOT NULL,
    output          TEXT NOT NULL,
    error_message   TEXT,
    node_key        TEXT,
    started_ms      INTEGER,
    attempts        INTEGER NOT NULL,
    progress        REAL NOT NULL
);
CREATE TABLE uploads (
    seq            INTEGER PRIMARY KEY,
    uuid           TEXT NOT NULL UNIQUE,
    owner          TEXT NOT NULL,
    fields         TEXT NOT NULL,
    options        TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    last_upload_ms INTEGER NOT NULL,
    files          TEXT NOT NULL
);
"""

_SCHEMA_V2 = """
ALTER TABLE tasks ADD COLUMN failovers INTEGER NOT NULL DEFAULT 0;
"""

_SCHEMA_V3 = """
ALTER TABLE nodes ADD COLUMN discovered TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
"""

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
"""Schema steps in order; ``MIGRATIONS[i]`` takes ``user_version`` from ``i`` to ``i + 1``.

Append only: a released step is never edited, a change is a new step.
"""

SCHEMA_VERSION = len(MIGRATIONS)

# Upserts keep the row (and so its ``seq``/``position``): an update never reorders a list.
_PUT_NODE = """
INSERT INTO nodes (key, position, hostname, port, token, locked, info, last_refreshed_ms, machine,
                   discovered, draining)
VALUES (?, (SELECT COALESCE(MAX(position), 0) + 1 FROM nodes), ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    hostname = excluded.hostname, port = excluded.port, token = excluded.token,
    locked = excluded.locked, info = excluded.info,
    last_refreshed_ms = excluded.last_refreshed_ms, machine = excluded.machine,
    discovered = excluded.discovered, draining = excluded.draining
"""
_NODE_COLUMNS = (
    "hostname, port, token, locked, info, last_refreshed_ms, machine, discovered, draining"
)

_PUT_ROUTE = """
INSERT INTO routes (uuid, node_key, owner, accessed_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (uuid) DO UPDATE SET
    node_key = excluded.node_key, owner = excluded.owner, accessed_ms = excluded.accessed_ms
"""
_ROUTE_COLUMNS = "uuid, node_key, owner, accessed_ms"

_TASK_COLUMNS = (
    "uuid, owner, stage, status, name, date_created_ms, fields, options, images_count, output, "
    "error_message, node_key, started_ms, attempts, progress, failovers"
)
_PUT_TASK = f"""
INSERT INTO tasks ({_TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (uuid) DO UPDATE SET
    owner = excluded.owner, stage = excluded.stage, status = excluded.status,
    name = excluded.name, date_created_ms = excluded.date_created_ms, fields = excluded.fields,
    options = excluded.options, images_count = excluded.images_count, output = excluded.output,
    error_message = excluded.error_message, node_key = excluded.node_key,
    started_ms = excluded.started_ms, attempts = excluded.attempts, progress = excluded.progress,
    failovers = excluded.failovers
"""

_UPLOAD_COLUMNS = "uuid, owner, fields, options, created_ms, last_upload_ms, files"
_PUT_UPLOAD = f"""
INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (uuid) DO UPDATE SET
    owner = excluded.owner, fields = excluded.fields, options = excluded.options,
    created_ms = excluded.created_ms, last_upload_ms = excluded.last_upload_ms,
    files = excluded.files
"""


# --- rows <-> values -------------------------------------------------------------------------


def _node_row(node: Node) -> tuple[Any, ...]:
    info = None if node.info is None else _dump(node.info.to_json())
    machine = None if node.machine is None else _dump(node.machine)
    return (
        node.key,
        node.hostname,
        node.port,
        node.token,
        int(node.locked),
        info,
        node.last_refreshed_ms,
        machine,
        node.discovered,
        int(node.draining),
    )


def _node_from_row(row: Sequence[Any]) -> Node:
    hostname, port, token, locked, info, last_refreshed_ms, machine, discovered, draining = row
    return Node(
        hostname=hostname,
        port=port,
        token=token,
        locked=bool(locked),
        info=_info_from_json(info),
        last_refreshed_ms=last_refreshed_ms,
        machine=None if machine is None else json.loads(machine),
        discovered=discovered,
        draining=bool(draining),
    )


def _route_row(route: Route) -> tuple[Any, ...]:
    return (route.uuid, route.node_key, route.owner, route.accessed_ms)


def _route_from_row(row: Sequence[Any]) -> Route:
    return Route(*row)


def _task_row(task: TaskEntry) -> tuple[Any, ...]:
    return (
        task.uuid,
        task.owner,
        task.stage.value,
        int(task.status),
        task.name,
        task.date_created_ms,
        _dump(task.fields),
        _dump(task.options),
        task.images_count,
        _dump(list(task.output)),
        task.error_message,
        task.node_key,
        task.started_ms,
        task.attempts,
        task.progress,
        task.failovers,
    )


def _task_from_row(row: Sequence[Any]) -> TaskEntry:
    return TaskEntry(
        uuid=row[0],
        owner=row[1],
        stage=TaskStage(row[2]),
        status=TaskStatus(row[3]),
        name=row[4],
        date_created_ms=row[5],
        fields=json.loads(row[6]),
        options=json.loads(row[7]),
        images_count=row[8],
        output=tuple(json.loads(row[9])),
        error_message=row[10],
        node_key=row[11],
        started_ms=row[12],
        attempts=row[13],
        progress=row[14],
        failovers=row[15],
    )


def _upload_row(upload: StagedUpload) -> tuple[Any, ...]:
    return (
        upload.uuid,
        upload.owner,
        _dump(upload.fields),
        _dump(upload.options),
        upload.created_ms,
        upload.last_upload_ms,
        _dump(list(upload.files)),
    )


def _upload_from_row(row: Sequence[Any]) -> StagedUpload:
    return StagedUpload(
        uuid=row[0],
        owner=row[1],
        fields=json.loads(row[2]),
        options=json.loads(row[3]),
        created_ms=row[4],
        last_upload_ms=row[5],
        files=tuple(json.loads(row[6])),
    )


# --- connection-thread helpers (run on the store's thread only) ------------------------------


def _set_wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL. Two processes opening a new file at once can make SQLite answer "locked"
    at once, without waiting for its busy timeout: retry for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # on the store's own thread, never the event loop


def _connect(path: Path) -> sqlite3.Connection:
    """Open in autocommit mode: every write below states its own transaction.

    A new file is made owner-only: it holds node tokens (SQLite gives its WAL the same mode).
    """
    created = not path.exists()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if created:
        os.chmod(path, 0o600)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = _set_wal(conn)
    if str(mode).lower() != "wal":
        log.warning("SQLite refused WAL mode for %s (got %s)", path, mode)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing schema steps, one transaction each.

    The version is read inside the write transaction, so two processes opening a new file at
    once cannot both apply the same step.
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _user_version(conn)
            if version >= SCHEMA_VERSION:
                break
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")
        log.info("state store schema upgraded to version %d", version + 1)
    conn.execute("COMMIT")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"state store schema version {version} is newer than this release "
            f"understands ({SCHEMA_VERSION}); upgrade clusterodm"
        )


def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], object]) -> None:
    """Run ``work`` as one write transaction: all of it lands, or none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        work(conn)
    except BaseException:
        _rollback(conn)
        raise
    conn.execute("COMMIT")


def _rollback(conn: sqlite3.Connection) -> None:
    """SQLite may already have rolled back by itself (disk full, I/O error)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class SqliteStore(LocalCounting):
    """Store backed by one SQLite file; see the module docstring for durability and threading.

    One process owns the file, so reservations, counters, the queue and the marker are kept in
    its memory (``LocalCounting``).
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # --- lifecycle ---

    async def open(self) -> None:
        """Create the file (and its folder) if needed and bring the schema up to date."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        try:
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        """Close the connection; later calls raise ``StoreError`` instead of touching the file.

        SQLite folds the WAL back into the main file when its last connection closes.
        """
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await self._call(self._close_sync, executor)
        finally:
            executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def schema_version(self) -> int:
        """The ``user_version`` on disk (for diagnostics and tests)."""
        return await self._read(_user_version)

    # --- nodes ---

    async def list_nodes(self) -> list[Node]:
        return await self._all(
            f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY position", _node_from_row
        )

    async def put_node(self, node: Node) -> None:
        await self._write(lambda c: c.execute(_PUT_NODE, _node_row(node)))

    async def delete_node(self, key: str) -> None:
        """The node and its routes go in one transaction: no route is left pointing nowhere."""

        def work(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM routes WHERE node_key = ?", (key,))
            c.execute("DELETE FROM nodes WHERE key = ?", (key,))

        await self._write(work)

    # --- routes ---

    async def get_route(self, uuid: str) -> Route | None:
        return await self._one(
            f"SELECT {_ROUTE_COLUMNS} FROM routes WHERE uuid = ?", (uuid,), _route_from_row
        )

    async def put_route(self, route: Route) -> None:
        await self._write(lambda c: c.execute(_PUT_ROUTE, _route_row(route)))

    async def put_routes(self, routes: Iterable[Route]) -> None:
        """Bulk insert or update in one transaction (legacy import, benchmarks)."""
        routes = list(routes)
        await self._write(lambda c: c.executemany(_PUT_ROUTE, map(_route_row, routes)))

    async def delete_route(self, uuid: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM routes WHERE uuid = ?", (uuid,)))

    async def list_routes(self) -> list[Route]:
        return await self._all(f"SELECT {_ROUTE_COLUMNS} FROM routes ORDER BY seq", _route_from_row)

    async def touch_routes(self, accessed: Iterable[tuple[str, int]]) -> None:
        """Unknown uuids are skipped silently: the route may have been deleted meanwhile."""
        rows = [(accessed_ms, uuid) for uuid, accessed_ms in accessed]
        if not rows:
            return
        await self._write(
            lambda c: c.executemany("UPDATE routes SET accessed_ms = ? WHERE uuid = ?", rows)
        )

    # --- task table ---

    async def get_task(self, uuid: str) -> TaskEntry | None:
        return await self._one(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE uuid = ?", (uuid,), _task_from_row
        )

    async def put_task(self, task: TaskEntry) -> None:
        await self._write(lambda c: c.execute(_PUT_TASK, _task_row(task)))

    async def put_task_if(self, task: TaskEntry, stages: tuple[TaskStage, ...]) -> bool:
        row = _task_row(task)
        allowed = {s.value for s in stages}
        written = False

        def work(c: sqlite3.Connection) -> None:
            nonlocal written
            found = c.execute("SELECT stage FROM tasks WHERE uuid = ?", (task.uuid,)).fetchone()
            if found is not None and found[0] in allowed:
                c.execute(_PUT_TASK, row)
                written = True

        await self._write(work)
        return written

    async def delete_task(self, uuid: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM tasks WHERE uuid = ?", (uuid,)))

    async def list_tasks(self) -> list[TaskEntry]:
        return await self._all(f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY seq", _task_from_row)

    # --- staged uploads ---

    async def get_upload(self, uuid: str) -> StagedUpload | None:
        return await self._one(
            f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE uuid = ?", (uuid,), _upload_from_row
        )

    async def put_upload(self, upload: StagedUpload) -> None:
        await self._write(lambda c: c.execute(_PUT_UPLOAD, _upload_row(upload)))

    async def delete_upload(self, uuid: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM uploads WHERE uuid = ?", (uuid,)))

    async def list_uploads(self) -> list[StagedUpload]:
        return await self._all(
            f"SELECT {_UPLOAD_COLUMNS} FROM uploads ORDER BY seq", _upload_from_row
        )

    # --- meta ---

    async def get_meta(self, key: str) -> str | None:
        return await self._one("SELECT value FROM meta WHERE key = ?", (key,), lambda r: str(r[0]))

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    async def delete_meta(self, key: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM meta WHERE key = ?", (key,)))

    async def list_meta(self, prefix: str = "") -> dict[str, str]:
        def query(c: sqlite3.Connection) -> dict[str, str]:
            rows = c.execute("SELECT key, value FROM meta ORDER BY key")
            return {str(k): str(v) for k, v in rows if str(k).startswith(prefix)}

        return await self._read(query)

    # --- plumbing ---

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        return await self._call(lambda: query(self._connection()))

    async def _all(self, sql: str, convert: Callable[[Sequence[Any]], T]) -> list[T]:
        """Every row of ``sql``, converted on the store's thread so the loop only gets values."""
        return await self._read(lambda c: [convert(row) for row in c.execute(sql)])

    async def _one(
        self, sql: str, params: Sequence[Any], convert: Callable[[Sequence[Any]], T]
    ) -> T | None:
        def query(c: sqlite3.Connection) -> T | None:
            row = c.execute(sql, params).fetchone()
            return None if row is None else convert(row)

        return await self._read(query)

    async def _write(self, work: Callable[[sqlite3.Connection], object]) -> None:
        await self._call(lambda: _in_transaction(self._connection(), work))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("state store is not open")
        return self._conn

    async def _call(self, fn: Callable[[], T], executor: ThreadPoolExecutor | None = None) -> T:
        """Run ``fn`` on the store's thread; sqlite3 and data errors become ``StoreError``.

        Rows are built inside ``fn`` too, so a value that cannot be serialised is reported the
        same way. A caller cancelled while waiting does not cancel the statement: it finishes
        on the thread, as one whole transaction or not at all.
        """
        executor = executor or self._executor
        if executor is None:
            raise StoreError("state store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"state store failed: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise StoreError(f"state store holds or was given unusable data: {exc}") from exc
