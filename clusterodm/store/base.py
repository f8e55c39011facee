"""The Store protocol: everything the cluster must remember across a restart.

Use cases talk to this protocol only, so a shared backend (several proxy instances) can replace
SQLite without touching the routes. Every method is a single atomic step; callers write state
before and after a side effect so that a restart can resume.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from clusterodm.model import Node, Route, StagedUpload, TaskEntry


class Store(Protocol):
    """Persistent state of one cluster."""

    async def open(self) -> None:
        """Create or migrate the schema; called once before use."""

    async def close(self) -> None:
        """Flush and release resources."""

    # nodes, in list order (the admin's 1-based numbers follow this order)
    async def list_nodes(self) -> list[Node]: ...

    async def put_node(self, node: Node) -> None:
        """Insert, or replace the node with the same key keeping its position."""

    async def delete_node(self, key: str) -> None:
        """Remove a node and every route that points at it."""

    # routes
    async def get_route(self, uuid: str) -> Route | None: ...

    async def put_route(self, route: Route) -> None: ...

    async def put_routes(self, routes: Iterable[Route]) -> None:
        """Insert or replace many routes in one atomic step (legacy import, bulk loads)."""

    async def delete_route(self, uuid: str) -> None: ...

    async def list_routes(self) -> list[Route]:
        """All routes, oldest first."""

    async def touch_routes(self, accessed: Iterable[tuple[str, int]]) -> None:
        """Batch-update ``accessed_ms`` for many routes (written lazily, off the hot path)."""

    # task table: tasks the proxy answers for itself
    async def get_task(self, uuid: str) -> TaskEntry | None: ...

    async def put_task(self, task: TaskEntry) -> None: ...

    async def delete_task(self, uuid: str) -> None: ...

    async def list_tasks(self) -> list[TaskEntry]:
        """All task-table entries, oldest first."""

    # staged uploads (init received, not committed)
    async def get_upload(self, uuid: str) -> StagedUpload | None: ...

    async def put_upload(self, upload: StagedUpload) -> None: ...

    async def delete_upload(self, uuid: str) -> None: ...

    async def list_uploads(self) -> list[StagedUpload]: ...

    # small key/value area for one-time markers (e.g. "legacy files imported")
    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def delete_meta(self, key: str) -> None: ...


class Coordination(Protocol):
    """What several proxy instances on one shared store agree through (the Redis store).

    Claims are keys with an owner and an expiry: whoever holds one does the work it names
    (dispatch a task, run the single-owner loops); a holder that dies lets it expire and another
    instance takes over. Events are short notices to every instance ("nodes changed"), lost
    when no one listens, so listeners re-read the state when they (re)connect.
    """

    async def claim(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take ``key`` if it is free, or extend it if ``owner`` holds it; False otherwise."""

    async def release(self, key: str, owner: str) -> None:
        """Give ``key`` up, only if ``owner`` holds it."""

    async def holders(self, keys: list[str]) -> list[str | None]:
        """Who holds each key (None: free or expired), in one round trip."""

    async def publish(self, event: str) -> None:
        """Send a notice to every instance listening."""

    def events(self) -> AsyncIterator[str]:
        """Notices as they arrive; ends with ``StoreError`` when the connection is lost."""
