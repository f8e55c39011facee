"""Copy an SQLite store into Redis, once, when a cluster moves to ``--store redis://...``.

    clusterodm-migrate-store --data-dir ./data --to redis://host:6379/0
    python -m clusterodm.store.migrate --data-dir ./data --to redis://host:6379/0 --force

Copies nodes (in list order, so the admin's node numbers stay), routes (oldest first, with their
last access), the task table, staged uploads and every meta entry. A Redis store that already
holds state under the prefix is left alone unless ``--force``, which clears it first. Stop the
cluster first: a task started during the copy would be missing from Redis.

Imports only the two stores, ``errors`` and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from clusterodm.errors import StoreError
from clusterodm.store.redis import RedisStore
from clusterodm.store.sqlite import DEFAULT_FILENAME, SqliteStore


@dataclass(frozen=True, slots=True)
class Copied:
    """How many values of each kind were copied."""

    nodes: int
    routes: int
    tasks: int
    uploads: int
    meta: int

    def __str__(self) -> str:
        return (
            f"{self.nodes} nodes, {self.routes} routes, {self.tasks} tasks, "
            f"{self.uploads} staged uploads, {self.meta} meta entries"
        )


def read_meta(path: Path) -> dict[str, str]:
    """Every meta entry of an SQLite store (the Store protocol has no listing for them).

    Read-only, after ``SqliteStore.open`` has brought the schema up to date.
    """
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            rows = conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read meta from {path}: {exc}") from exc
    return {str(key): str(value) for key, value in rows}


async def migrate(source: SqliteStore, target: RedisStore, force: bool = False) -> Copied:
    """Copy everything from the open ``source`` into the open ``target``."""
    if not await target.is_empty():
        if not force:
            raise StoreError(
                f"{target.location} already holds state under the prefix {target.prefix!r}; "
                "use --force to replace it"
            )
        await target.clear()
    nodes = await source.list_nodes()
    routes = await source.list_routes()
    tasks = await source.list_tasks()
    uploads = await source.list_uploads()
    meta = await asyncio.to_thread(read_meta, source.path)
    for node in nodes:
        await target.put_node(node)
    await target.put_routes(routes)
    for task in tasks:
        await target.put_task(task)
    for upload in uploads:
        await target.put_upload(upload)
    for key, value in meta.items():
        await target.set_meta(key, value)
    return Copied(len(nodes), len(routes), len(tasks), len(uploads), len(meta))


async def run(data_dir: Path, url: str, force: bool) -> Copied:
    path = data_dir / DEFAULT_FILENAME
    if not path.is_file():
        raise StoreError(f"no SQLite store at {path}")
    source, target = SqliteStore(path), RedisStore(url)
    await source.open()
    try:
        await target.open()
        try:
            return await migrate(source, target, force)
        finally:
            await target.close()
    finally:
        await source.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clusterodm-migrate-store",
        description="Copy a cluster's SQLite store (--data-dir) into Redis (--store URL).",
    )
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="default ./data")
    p.add_argument("--to", required=True, metavar="URL", help="redis://host:6379/0[?prefix=...]")
    p.add_argument("--force", action="store_true", help="replace state already in Redis")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        copied = asyncio.run(run(args.data_dir, args.to, args.force))
    except StoreError as exc:
        print(f"clusterodm-migrate-store: {exc.message}", file=sys.stderr)
        return 1
    target = RedisStore(args.to)
    print(f"copied {copied} from {args.data_dir / DEFAULT_FILENAME} to {target.location}")
    print(f"(prefix {target.prefix!r}); start the cluster with --store and the same URL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
