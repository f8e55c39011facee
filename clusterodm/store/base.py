"""The Store protocol: everything the cluster must remember across a restart.

Use cases talk to this protocol only, so a shared backend (several proxy instances) can replace
SQLite without touching the routes. Every method is a single atomic step; callers write state
before and after a side effect so that a restart can resume.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from clusterodm.model import Node, Route, StagedUpload, TaskEntry, TaskStage, Waiting


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

    async def put_task_if(self, task: TaskEntry, stages: tuple[TaskStage, ...]) -> bool:
        """Write ``task`` only if the stored entry exists and its stage is one of ``stages``
        (compare-and-set: a cancel written meanwhile, by this or another instance, is kept).
        Answers whether it was written."""

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

    async def list_meta(self, prefix: str = "") -> dict[str, str]:
        """Every meta entry whose key starts with ``prefix``."""

    # --- counting that all instances sharing the store agree on ------------------------------
    # With one process (SQLite) these are kept in the process's memory: nothing else counts.

    async def reserve(self, pool: str, holder: str, capacity: int, hold_ms: int) -> bool:
        """Take one place in ``pool`` for ``holder`` if fewer than ``capacity`` live places are
        taken (check and take in one atomic step); a holder that has one already keeps it and
        its expiry moves to ``hold_ms`` from now. A place lapses ``hold_ms`` after it was last
        taken, so a dead instance's places free themselves."""

    async def unreserve(self, pool: str, holder: str, linger_ms: int = 0) -> None:
        """Give a place back: at once, or after ``linger_ms`` (still counted until then)."""

    async def reserved(self) -> dict[str, int]:
        """Live places per pool."""

    async def count(
        self, name: str, key: str, delta: int, now_ms: int, every_ms: int, factor: float
    ) -> int:
        """Add ``delta`` to the decaying counter ``key`` of ``name`` (never below 0) and answer
        its value. Every ``every_ms`` since the counter set's first use, each count is
        forgiven down to ``floor(count * factor)``; ``delta`` 0 only reads."""

    async def queue_join(self, uuid: str, owner: str, images: int) -> Waiting:
        """Put ``uuid`` in the fair queue (the rule of ``tasks/queue.py``), or answer its entry
        if it waits already (it keeps its place)."""

    async def queue_leave(self, uuid: str, served: bool) -> None:
        """Take ``uuid`` out of the queue; ``served`` moves the queue's virtual clock."""

    async def queue_list(self) -> list[Waiting]:
        """Every waiting task, in no particular order."""

    async def marker(self) -> str:
        """The store's identity stamp, created when missing. It changes only when the store
        lost its state (a Redis that restarted empty): the cue to write back what is known."""


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
