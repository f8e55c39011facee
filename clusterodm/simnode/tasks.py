"""Tasks and their life cycle: initialise, queue, simulated run, cancel, restart, remove.

Statuses follow NodeODM: commit creates a task in RUNNING (20) while it initialises, then it
waits QUEUED (10) until one of ``parallel`` slots is free (first queued first), runs for
``test_seconds`` with progress and output advancing, and ends COMPLETED (40) or FAILED (30).
Unlike NodeODM's test mode, a cancel really stops the run and a removed task fires no webhook.
Every background job is owned by the :class:`TaskManager` and cancelled by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import IntEnum
from pathlib import Path
from typing import Any

from .config import SimNodeConfig
from .engine import images_json, output_script, result_members
from .options import with_post_processing_defaults
from .zipgen import ZipImage, build_zip
from .zipurl import ZipUrlError, fetch_images_zip

log = logging.getLogger(__name__)

#: Files that NodeODM's initialisation moves out of ``images/`` (GCP, geo, alignment, seed).
_SPECIAL_SUFFIXES = (".txt", ".zip")
_SPECIAL_NAMES = ("align.las", "align.laz", "align.tif")
COMPRESSING_LINE = "Compressing all.zip\n"


class TaskStatus(IntEnum):
    """NodeODM's status codes."""

    QUEUED = 10
    RUNNING = 20
    FAILED = 30
    COMPLETED = 40
    CANCELED = 50


ENDED = (TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.CANCELED)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False)
class Task:
    """One task as the node sees it; :meth:`info` renders NodeODM's task info."""

    uuid: str
    name: str | None
    date_created: int
    options: list[dict[str, Any]]
    images: list[str]
    directory: Path
    webhook: str | None = None
    skip_post_processing: bool = False
    outputs: list[str] | None = None
    status: TaskStatus = TaskStatus.RUNNING
    error_message: str | None = None
    progress: float = 0.0
    output: list[str] = field(default_factory=list)
    processing_time_ms: int = -1
    started_at: float | None = None  # time.monotonic() while running
    initialized: bool = False
    zip: ZipImage | None = None

    def current_processing_time(self) -> int:
        if self.status == TaskStatus.RUNNING and self.started_at is not None:
            return int((time.monotonic() - self.started_at) * 1000)
        return self.processing_time_ms

    def info(self, output_from: int | None = None) -> dict[str, Any]:
        """Task info in NodeODM's key order; ``output_from`` adds ``output[N:]``."""
        body: dict[str, Any] = {"uuid": self.uuid}
        if self.name is not None:  # NodeODM leaves the key out when no name was sent
            body["name"] = self.name
        status: dict[str, Any] = {"code": int(self.status)}
        if self.error_message is not None:
            status["errorMessage"] = self.error_message
        progress = round(self.progress, 2)
        body.update(
            dateCreated=self.date_created,
            processingTime=self.current_processing_time(),
            status=status,
            options=self.options,
            imagesCount=len(self.images),
            progress=int(progress) if float(progress).is_integer() else progress,
        )
        if output_from is not None:
            body["output"] = self.output[output_from:]
        return body


class TaskNotFound(LookupError):
    """No task with this uuid; ``str()`` is NodeODM's text."""

    def __init__(self, uuid: str) -> None:
        super().__init__(f"{uuid} not found")


class CannotRestart(ValueError):
    def __init__(self) -> None:
        super().__init__("Task cannot be restarted")


class TaskManager:
    """All tasks of one node, the queue and the simulated runs."""

    def __init__(
        self,
        config: SimNodeConfig,
        data_dir: Path,
        on_finished: Callable[[Task], None],
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.tasks: dict[str, Task] = {}
        self._on_finished = on_finished
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._inits: dict[str, asyncio.Task[None]] = {}

    def get(self, uuid: str) -> Task:
        try:
            return self.tasks[uuid]
        except KeyError:
            raise TaskNotFound(uuid) from None

    def queue_count(self) -> int:
        """Tasks QUEUED or RUNNING (initialising included), as ``/info`` reports."""
        waiting = (TaskStatus.QUEUED, TaskStatus.RUNNING)
        return sum(task.status in waiting for task in self.tasks.values())

    def _spawn(
        self, jobs: dict[str, asyncio.Task[None]], uuid: str, coro: Coroutine[Any, Any, None]
    ) -> None:
        job = asyncio.create_task(coro, name=f"simnode-{uuid}")
        jobs[uuid] = job

        def done(finished: asyncio.Task[None]) -> None:
            if jobs.get(uuid) is finished:
                del jobs[uuid]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("task %s job failed", uuid, exc_info=finished.exception())

        job.add_done_callback(done)

    # -- creation and initialisation ------------------------------------------------------------

    def add(self, task: Task, staging: Path, zipurl: str | None = None) -> None:
        """Register a committed task (status 20) and initialise it in the background."""
        self.tasks[task.uuid] = task
        self._spawn(self._inits, task.uuid, self._initialise(task, staging, zipurl))

    async def _initialise(self, task: Task, staging: Path, zipurl: str | None) -> None:
        try:
            if zipurl is not None:
                await fetch_images_zip(zipurl, staging)
            names = await asyncio.to_thread(_move_staged_files, staging, task.directory)
        except (ZipUrlError, OSError) as error:
            await self._fail_initialisation(task, str(error))
            return
        max_images = self.config.max_images
        if max_images is not None and len(names) > max_images:
            message = (
                f"{len(names)} images uploaded, but this node can only process up to {max_images}."
            )
            await self._fail_initialisation(task, message)
            return
        task.images = [n for n in names if not _is_special(n)]
        if not task.skip_post_processing:
            task.options = with_post_processing_defaults(task.options)
        task.initialized = True
        if task.status == TaskStatus.RUNNING:  # a cancel during initialisation is kept
            task.status = TaskStatus.QUEUED
            self._schedule()

    async def _fail_initialisation(self, task: Task, message: str) -> None:
        """Initialisation failed: status 30 with a message, folders gone, task still listed."""
        task.status = TaskStatus.FAILED
        task.error_message = message
        task.images = []
        task.initialized = True
        await asyncio.to_thread(shutil.rmtree, task.directory, True)

    # -- queue and runs ---------------------------------------------------------------------

    def _schedule(self) -> None:
        """Start queued tasks, oldest first, while fewer than ``parallel`` runs are going."""
        for task in self.tasks.values():
            if len(self._runs) >= max(1, self.config.parallel):
                return
            if task.status == TaskStatus.QUEUED and task.uuid not in self._runs:
                task.status = TaskStatus.RUNNING
                task.started_at = time.monotonic()
                self._spawn(self._runs, task.uuid, self._run(task))

    async def _run(self, task: Task) -> None:
        script = output_script(task.uuid, task.images)
        duration_s = max(0.0, self.config.test_seconds)
        tick_s = min(0.25, max(0.02, duration_s / 50))
        started = time.monotonic()
        while True:
            fraction = (
                1.0 if duration_s == 0 else min(1.0, (time.monotonic() - started) / duration_s)
            )
            task.progress = max(task.progress, 90 * fraction)
            task.output.extend(script[len(task.output) : math.ceil(fraction * len(script))])
            if fraction >= 1.0:
                break
            await asyncio.sleep(tick_s)
        task.progress = 93
        if self.config.test_fail_tasks:
            self._finish(task, TaskStatus.FAILED)
            return
        task.output.append(COMPRESSING_LINE)
        members = result_members(task.output, task.images, self.config.zip_size, task.outputs)
        task.zip = await asyncio.to_thread(build_zip, members, datetime.now())
        task.progress = 97
        self._finish(task, TaskStatus.COMPLETED)

    def _finish(self, task: Task, status: TaskStatus) -> None:
        task.processing_time_ms = task.current_processing_time()
        task.status = status
        task.progress = 100
        task.started_at = None
        self._runs.pop(task.uuid, None)
        self._on_finished(task)
        self._schedule()

    def _stop_run(self, task: Task) -> bool:
        """Stop the task's run if it has one; True when a run was stopped."""
        run = self._runs.pop(task.uuid, None)
        if run is None:
            return False
        run.cancel()
        task.progress = 100  # NodeODM reports 100 once a cancelled process has exited
        return True

    # -- client actions ---------------------------------------------------------------------

    def cancel(self, uuid: str, notify: bool = True) -> None:
        """Cancel from any status; a stopped run fires the webhook as NodeODM's does."""
        task = self.get(uuid)
        was_running = self._stop_run(task)
        task.status = TaskStatus.CANCELED
        task.processing_time_ms = -1
        task.started_at = None
        if was_running and notify:
            self._on_finished(task)
        self._schedule()

    async def remove(self, uuid: str) -> None:
        """Cancel silently, delete the task's folder and forget it. As NodeODM, a task still
        initialising is removed once its images have moved, so no folder is left behind."""
        self.cancel(uuid, notify=False)
        init = self._inits.get(uuid)
        if init is not None:
            await asyncio.gather(asyncio.shield(init), return_exceptions=True)
        task = self.tasks.pop(uuid, None)
        if task is None:  # removed by another request meanwhile
            return
        await asyncio.to_thread(shutil.rmtree, task.directory, True)

    def restart(self, uuid: str, options: list[dict[str, Any]] | None) -> None:
        """Run an ended task again from scratch, optionally with new options."""
        task = self.get(uuid)
        if not task.initialized and task.status == TaskStatus.CANCELED:
            task.status = TaskStatus.RUNNING  # initialisation still going; it queues the task
        elif task.status in ENDED and task.initialized:
            task.status = TaskStatus.QUEUED
        else:
            raise CannotRestart()
        task.output = []
        task.progress = 0.0
        task.processing_time_ms = -1
        task.error_message = None
        task.zip = None
        task.date_created = now_ms()
        if options is not None:  # new options get the post-processing defaults again
            task.options = (
                options if task.skip_post_processing else with_post_processing_defaults(options)
            )
        self._schedule()

    def webhook_body(self, task: Task) -> dict[str, Any]:
        """Task info without output, plus ``images`` (the task's images.json)."""
        return {**task.info(), "images": images_json(task.images)}

    async def close(self) -> None:
        """Cancel every initialisation and run, and wait for them to end."""
        jobs = [*self._runs.values(), *self._inits.values()]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


def _is_special(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_SPECIAL_SUFFIXES) or lower in _SPECIAL_NAMES


def _move_staged_files(staging: Path, task_dir: Path) -> list[str]:
    """Move staged uploads into the task's ``images/`` (drop body.json); return their names."""
    images_dir = task_dir / "images"
    task_dir.mkdir(parents=True, exist_ok=True)
    (staging / "body.json").unlink(missing_ok=True)
    os.replace(staging, images_dir)
    return sorted(os.listdir(images_dir))


def iso_now() -> str:
    """``new Date().toISOString()``, for NodeODM's default task name."""
    moment = datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
