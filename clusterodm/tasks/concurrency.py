"""How many tasks a user has running, for ``maxConcurrentTasks``.

Counted as the original does, plus what the original misses: the user's task-table entries
that are not final (held by the proxy: committed, dispatching, waiting) and the routes they own
whose node reports the task queued or running. Nodes are asked concurrently, each with a short
deadline; a node that does not answer in time counts its tasks as running, so a slow node cannot
be used to slip past the limit (original: an unanswered task is not counted).

Also usable by the proxy queue to decide whether a waiting task may start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from clusterodm.compat import timeout
from clusterodm.errors import ClusterError, LimitExceeded
from clusterodm.model import Route, TaskEntry, TaskStatus

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0
ASK_PARALLEL = 16  # node calls in flight at once for one count
ACTIVE = (TaskStatus.QUEUED, TaskStatus.RUNNING)

#: asks a node for one task's status code; None when the node or the task is gone
StatusOf = Callable[[Route], Awaitable[int | None]]


def limit_message(limit: int) -> str:
    return (
        f"Reached maximum number of concurrent tasks: {limit}. "
        "Please wait until other tasks have finished, then restart the task."
    )


async def count_active(
    owner: str,
    tasks: Iterable[TaskEntry],
    routes: Iterable[Route],
    status_of: StatusOf,
    timeout_s: float = ASK_TIMEOUT_S,
) -> int:
    """Tasks of ``owner`` that are queued or running, on the proxy or on a node."""
    held = {t.uuid for t in tasks if t.owner == owner and not t.status.is_final}
    remote = [r for r in routes if r.owner == owner and r.uuid not in held]

    gate = asyncio.Semaphore(ASK_PARALLEL)

    async def ask(route: Route) -> bool:
        try:
            async with gate, timeout(timeout_s):
                code = await status_of(route)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning(
                "task %s: no status within %.0f s, counted as running", route.uuid, timeout_s
            )
            return True
        except ClusterError:
            return False  # node gone or task unknown there: not running
        return code in ACTIVE

    if not remote:
        return len(held)
    answers = await asyncio.gather(*(ask(r) for r in remote))
    return len(held) + sum(answers)


def status_code(info: Any) -> int | None:
    """The status code in a NodeODM ``/task/<uuid>/info`` answer."""
    if isinstance(info, dict):
        status = info.get("status")
        if isinstance(status, dict) and isinstance(status.get("code"), int):
            return int(status["code"])
    return None


class ConcurrencyGate:
    """Refuses a new task when its owner is at the limit.

    One lock per owner around check-and-record, so two commits arriving together cannot both
    see room for one more task. With a shared store the lock is the cluster's (``shared_lock``,
    a claim in the store) and the task table is read afresh under it (``before_count``), so two
    commits on two instances cannot both take the last place either.
    """

    def __init__(
        self,
        tasks: Callable[[], Iterable[TaskEntry]],
        routes: Callable[[], Iterable[Route]],
        status_of: StatusOf,
        timeout_s: float = ASK_TIMEOUT_S,
    ) -> None:
        self._tasks = tasks
        self._routes = routes
        self._status_of = status_of
        self._timeout_s = timeout_s
        self._locks: dict[str, asyncio.Lock] = {}
        #: set with a shared store (``tasks/scaleout.py``)
        self.shared_lock: Callable[[str], AbstractAsyncContextManager[Any]] | None = None
        self.before_count: Callable[[], Awaitable[None]] | None = None

    def lock(self, owner: str) -> AbstractAsyncContextManager[Any]:
        if self.shared_lock is not None:
            return self.shared_lock(owner)
        return self._locks.setdefault(owner, asyncio.Lock())

    async def active(self, owner: str) -> int:
        if self.before_count is not None:
            await self.before_count()
        return await count_active(
            owner, self._tasks(), self._routes(), self._status_of, self._timeout_s
        )

    async def check(self, owner: str, limit: int | None) -> None:
        """Raise LimitExceeded if ``owner`` already runs ``limit`` tasks (0 = none allowed).

        Call it holding ``lock(owner)`` when the new task is recorded right after.
        """
        if limit is None:
            return
        if limit <= 0 or await self.active(owner) >= limit:
            raise LimitExceeded(limit_message(limit))
