"""Dispatcher: owns every dispatch job, forwarding a committed task to a node.

A job runs init (``set-uuid`` = the task's uuid, so it never changes) -> parallel uploads with
retries -> commit, on the best node; on failure it backs off and retries, switching to another
node when one exists. The task-table entry is written before each step, so after a crash
``resume`` starts every unfinished job again from the staged files. Jobs are owned here: a
client leaving never cancels one; ``close`` cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from clusterodm.config import DispatchSettings
from clusterodm.errors import NodeError, NodeRejected, NodeUnreachable
from clusterodm.model import Node, TaskEntry, TaskStage, TaskStatus
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.store.staging import Staging
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable

log = logging.getLogger(__name__)

PENDING = (TaskStage.COMMITTED, TaskStage.DISPATCHING)


class Dispatcher:
    def __init__(
        self,
        registry: NodeRegistry,
        client: NodeClient,
        routes: RouteTable,
        table: TaskTable,
        staging: Staging,
        settings: DispatchSettings,
        on_node_failure: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.client = client
        self.routes = routes
        self.table = table
        self.staging = staging
        self.settings = settings
        self.on_node_failure = on_node_failure
        self.clock = clock
        self._jobs: dict[str, asyncio.Task[None]] = {}

    def submit(self, uuid: str) -> None:
        """Start forwarding ``uuid`` (idempotent while a job runs)."""
        job = self._jobs.get(uuid)
        if job is not None and not job.done():
            return
        task = asyncio.create_task(self._run(uuid), name=f"dispatch {uuid}")
        self._jobs[uuid] = task
        task.add_done_callback(lambda t: self._forget(uuid, t))

    def _forget(self, uuid: str, job: asyncio.Task[None]) -> None:
        if self._jobs.get(uuid) is job:
            del self._jobs[uuid]

    def active(self, uuid: str) -> bool:
        job = self._jobs.get(uuid)
        return job is not None and not job.done()

    async def resume(self) -> int:
        """After a restart: start again every task that was committed but not yet on a node."""
        count = 0
        for task in self.table.all():
            if task.stage in PENDING:
                self.submit(task.uuid)
                count += 1
        return count

    async def cancel(self, uuid: str) -> bool:
        """Stop a running job; True if there was one."""
        job = self._jobs.pop(uuid, None)
        if job is None or job.done():
            return False
        job.cancel()
        try:
            await job
        except asyncio.CancelledError:
            pass
        return True

    async def close(self) -> None:
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._jobs.clear()

    def _backoff(self, attempt: int) -> float:
        base = self.settings.backoff_base_s * (2 ** (attempt - 1))
        return min(self.settings.backoff_max_s, base) * (0.5 + random.random() / 2)

    async def _run(self, uuid: str) -> None:
        try:
            await self._dispatch(uuid)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("task %s: dispatch crashed", uuid)
            await self.table.say(
                uuid, f"Dispatch failed: {e}", stage=TaskStage.FAILED, status=TaskStatus.FAILED
            )

    async def _dispatch(self, uuid: str) -> None:
        task = self.table.get(uuid)
        if task is None or task.stage not in PENDING:
            return
        tried: set[str] = set()
        if task.stage is TaskStage.DISPATCHING and task.node_key:
            # Interrupted mid-forward: that node may hold half an upload under this uuid, and a
            # re-init there would keep the old files beside the new ones. Prefer another node.
            if await self._already_on(task.node_key, uuid):
                await self._landed(task, task.node_key)
                return
            tried.add(task.node_key)
        last_error = "no node available"
        for attempt in range(1, self.settings.attempts + 1):
            node = self.registry.best(task.images_count, exclude=tried) or self.registry.best(
                task.images_count
            )
            if node is None:
                last_error = f"No node can process {task.images_count} images right now."
            else:
                self.registry.choose(node.key)
                task = (
                    await self.table.update(
                        uuid,
                        stage=TaskStage.DISPATCHING,
                        node_key=node.key,
                        attempts=task.attempts + 1,
                    )
                    or task
                )
                try:
                    with self.registry.transient(node.key):
                        await self._send(node, task)
                except NodeError as e:
                    last_error = e.message
                    tried.add(node.key)
                    log.warning("task %s: forwarding to %s failed: %s", uuid, node.key, e.message)
                    if isinstance(e, NodeUnreachable) and self.on_node_failure:
                        self.on_node_failure(node.key)
                else:
                    await self._landed(task, node.key)
                    return
            if attempt < self.settings.attempts:
                await asyncio.sleep(self._backoff(attempt))
                task = self.table.get(uuid) or task
        await self.table.update(
            uuid,
            stage=TaskStage.FAILED,
            status=TaskStatus.FAILED,
            error_message=last_error,
            output=(*task.output, f"Could not start the task: {last_error}"),
        )
        log.error("task %s: gave up dispatching: %s", uuid, last_error)

    async def _already_on(self, node_key: str, uuid: str) -> bool:
        node = self.registry.get(node_key)
        if node is None:
            return False
        try:
            info = await self.client.task_info(node, uuid)
        except NodeError:
            return False
        return info.get("uuid") == uuid

    async def _send(self, node: Node, task: TaskEntry) -> None:
        fields = {k: v for k, v in task.fields.items() if k != "options"}
        fields["options"] = json.dumps(task.options)
        await self.client.init_task(node, task.uuid, fields)
        files = self.staging.files(task.uuid)
        if not files:
            raise NodeRejected("staged images are missing", node.key, no_retry=True)
        sem = asyncio.Semaphore(self.settings.parallel_uploads)

        async def send_one(path: Any) -> None:
            async with sem:
                for attempt in range(1, self.settings.upload_retries + 1):
                    try:
                        await self.client.upload(node, task.uuid, path)
                        return
                    except NodeRejected as e:
                        if e.no_retry or attempt == self.settings.upload_retries:
                            raise
                    except NodeUnreachable:
                        if attempt == self.settings.upload_retries:
                            raise
                    await asyncio.sleep(min(self._backoff(attempt), 5.0))

        try:
            async with asyncio.TaskGroup() as tg:
                for path in files:
                    tg.create_task(send_one(path))
        except ExceptionGroup as eg:
            first = eg.exceptions[0]
            raise (
                first if isinstance(first, NodeError) else NodeRejected(str(first), node.key)
            ) from eg
        await self.client.commit(node, task.uuid)

    async def _landed(self, task: TaskEntry, node_key: str) -> None:
        """The node has the task: store the route first, then drop the entry and files."""
        await self.routes.add(task.uuid, node_key, task.owner)
        self.registry.bump_queue(node_key)
        await self.table.delete(task.uuid)
        await self.staging.remove(task.uuid)
        log.info("task %s forwarded to %s", task.uuid, node_key)
