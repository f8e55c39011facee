"""TaskTable: tasks the proxy answers for itself (committed but not yet on a node, queued,
failed to dispatch, or kept after their node was torn down). Written through to the store so a
restart finds every one of them (original: memory only, lost on restart).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from clusterodm.model import TaskEntry, TaskStage
from clusterodm.store.base import Store


class TaskTable:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._tasks: dict[str, TaskEntry] = {}

    async def load(self) -> None:
        self._tasks = {t.uuid: t for t in await self._store.list_tasks()}

    def get(self, uuid: str) -> TaskEntry | None:
        return self._tasks.get(uuid)

    async def refresh(self, uuid: str) -> TaskEntry | None:
        """Read one entry from the store into memory (another instance may have changed it)."""
        task = await self._store.get_task(uuid)
        if task is None:
            self._tasks.pop(uuid, None)
        else:
            self._tasks[uuid] = task
        return task

    def sync(self, entries: Iterable[TaskEntry], keep: Callable[[str], bool]) -> None:
        """Take the store's entries as the memory view (shared store), except those ``keep``
        names: a job here is writing them, so the memory copy is the newest."""
        fresh = {t.uuid: t for t in entries}
        for uuid, task in self._tasks.items():
            if keep(uuid):
                fresh[uuid] = task
        self._tasks = fresh

    def all(self) -> list[TaskEntry]:
        """Tasks the proxy answers for: not those already on a node (stage LANDED)."""
        return [t for t in self._tasks.values() if t.stage is not TaskStage.LANDED]

    def landed(self) -> list[TaskEntry]:
        """Tasks on a node whose images are kept for failover."""
        return [t for t in self._tasks.values() if t.stage is TaskStage.LANDED]

    def entries(self) -> list[TaskEntry]:
        """Every entry, oldest first."""
        return list(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    async def put(self, task: TaskEntry) -> TaskEntry:
        await self._store.put_task(task)
        self._tasks[task.uuid] = task
        return task

    async def update(self, uuid: str, **changes: Any) -> TaskEntry | None:
        task = self._tasks.get(uuid)
        if task is None:
            return None
        return await self.put(dataclasses.replace(task, **changes))

    async def say(self, uuid: str, line: str, **changes: Any) -> TaskEntry | None:
        """Append an output line (what the client reads with /output), with other changes."""
        task = self._tasks.get(uuid)
        if task is None:
            return None
        return await self.put(dataclasses.replace(task, output=(*task.output, line), **changes))

    async def update_if(
        self, uuid: str, stages: tuple[TaskStage, ...], **changes: Any
    ) -> TaskEntry | None:
        """``update``, only if the stored entry's stage is still one of ``stages`` (a cancel
        written meanwhile by any instance is never overwritten); None if it was not written,
        and the memory copy is then the stored one."""
        task = self._tasks.get(uuid)
        if task is None:
            return None
        updated = dataclasses.replace(task, **changes)
        if await self._store.put_task_if(updated, stages):
            self._tasks[uuid] = updated
            return updated
        await self.refresh(uuid)
        return None

    async def delete(self, uuid: str) -> None:
        if self._tasks.pop(uuid, None) is not None:
            await self._store.delete_task(uuid)
