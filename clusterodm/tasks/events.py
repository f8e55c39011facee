"""TaskEvents: one log line per step of a task's life, and its timeline for the admin page.

The parts that move a task call in here (intake: received; dispatcher: queued, dispatched,
on its node; actions: cancelled, removed; failover: moved; the download endpoint: downloaded)
and ``watch_once`` asks nodes, every few seconds, how the tasks this instance sent them are
doing, so running, completed, failed and cancelled are logged even when no client polls.
Each line is an ``event`` (see ``log.event``) with ``uuid``, ``node`` and ``user`` fields and
the durations: ``queued_s`` (received to sent), ``uploading_s`` (sending to the node) and
``processing_s`` (on the node until it ended).

The timelines live in memory, bounded (``max_tracked``, oldest ended first): they are for the
operator's eyes, not state; after a restart tasks already on nodes are no longer followed.
Also keeps ``Series``, a small time series of the cluster (sampled by ``sample``) for the
admin page's charts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from clusterodm.compat import timeout
from clusterodm.errors import NodeError
from clusterodm.log import event
from clusterodm.model import Node, TaskStatus

log = logging.getLogger("clusterodm.tasks.events")

WATCH_CONCURRENCY = 8
WATCH_TIMEOUT_S = 5.0
ENDED = {
    int(TaskStatus.COMPLETED): "completed",
    int(TaskStatus.FAILED): "failed",
    int(TaskStatus.CANCELED): "cancelled",
}
SERIES_STEP_S = 60.0
SERIES_POINTS = 6 * 60  # six hours of one-minute samples


class InfoSource(Protocol):
    async def task_info(self, node: Node, uuid: str) -> Any: ...


@dataclass(slots=True)
class Timeline:
    """What is known of one task's life here; times are epoch seconds."""

    uuid: str
    user: str = ""
    name: str | None = None
    images: int = 0
    size: int = 0
    received: float = 0.0
    queued: float | None = None
    place: int | None = None
    dispatched: float | None = None
    landed: float | None = None
    running: float | None = None
    ended: float | None = None
    state: str = "received"
    node: str = ""
    attempt: int = 0

    def durations(self, now: float) -> dict[str, float | None]:
        """Seconds queued (received -> sent), uploading (sent -> on node), processing."""
        sent = self.dispatched
        queued = (sent if sent is not None else (self.ended or now)) - self.received
        uploading = None
        if sent is not None:
            uploading = (self.landed if self.landed is not None else (self.ended or now)) - sent
        start = self.running if self.running is not None else self.landed
        processing = None if start is None else (self.ended or now) - start
        return {
            "queued_s": round(max(0.0, queued), 3),
            "uploading_s": None if uploading is None else round(max(0.0, uploading), 3),
            "processing_s": None if processing is None else round(max(0.0, processing), 3),
        }

    def view(self, now: float) -> dict[str, Any]:
        """For the admin page (camelCase as the rest of ``/r/``)."""
        d = self.durations(now)
        return {
            "user": self.user,
            "state": self.state,
            "place": self.place if self.state == "queued" else None,
            "receivedMs": int(self.received * 1000),
            "queuedS": d["queued_s"],
            "uploadingS": d["uploading_s"],
            "runningS": d["processing_s"],
            "attempt": self.attempt,
        }


@dataclass(slots=True)
class Series:
    """Samples of the cluster every minute for the last hours, and per-minute counters."""

    step_s: float = SERIES_STEP_S
    points: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=SERIES_POINTS))
    finished: int = 0  # tasks ended since the last sample
    bytes_in: float = 0.0  # counters at the last sample
    bytes_out: float = 0.0

    def sample(
        self, now: float, queue: int, running: int, bytes_in: float, bytes_out: float
    ) -> None:
        first = not self.points and self.bytes_in == 0 and self.bytes_out == 0
        self.points.append(
            {
                "t": round(now, 3),
                "queue": queue,
                "running": running,
                "finished": self.finished,
                "bytesIn": 0.0 if first else max(0.0, bytes_in - self.bytes_in),
                "bytesOut": 0.0 if first else max(0.0, bytes_out - self.bytes_out),
            }
        )
        self.finished = 0
        self.bytes_in, self.bytes_out = bytes_in, bytes_out

    def json(self) -> dict[str, Any]:
        return {"stepS": self.step_s, "points": list(self.points)}


class TaskEvents:
    def __init__(self, clock: Callable[[], float] = time.time, max_tracked: int = 10_000) -> None:
        self.clock = clock
        self.max_tracked = max_tracked
        self.tasks: dict[str, Timeline] = {}
        self.series = Series()

    # --- bookkeeping ------------------------------------------------------------------------
    def get(self, uuid: str) -> Timeline | None:
        return self.tasks.get(uuid)

    def _track(self, uuid: str) -> Timeline:
        t = self.tasks.get(uuid)
        if t is None:
            t = self.tasks[uuid] = Timeline(uuid, received=self.clock())
            self._trim()
        return t

    def _trim(self) -> None:
        if len(self.tasks) <= self.max_tracked:
            return
        ended = [u for u, t in self.tasks.items() if t.ended is not None]
        for uuid in (ended or list(self.tasks))[: len(self.tasks) - self.max_tracked]:
            del self.tasks[uuid]

    def _log(self, t: Timeline, level: int, msg: str, name: str, **fields: Any) -> None:
        event(log, level, msg, event=name, uuid=t.uuid, node=t.node, user=t.user, **fields)

    # --- events -----------------------------------------------------------------------------
    def received(self, uuid: str, user: str, images: int, size: int, name: str | None) -> None:
        t = self._track(uuid)
        t.user, t.images, t.size, t.name = user, images, size, name
        t.received = self.clock()
        self._log(
            t,
            logging.INFO,
            f"task received: {images} images",
            "received",
            images=images,
            bytes=size,
        )

    def queued(self, uuid: str, place: int, total: int) -> None:
        t = self._track(uuid)
        first = t.state != "queued"
        if first:
            t.queued = self.clock()
        t.state, t.place = "queued", place
        if first:
            self._log(
                t,
                logging.INFO,
                f"task queued at place {place} of {total}",
                "queued",
                place=place,
                total=total,
            )

    def dispatched(self, uuid: str, node: str, attempt: int) -> None:
        t = self._track(uuid)
        t.state, t.node, t.attempt, t.place = "dispatching", node, attempt, None
        if t.dispatched is None:
            t.dispatched = self.clock()
        self._log(
            t,
            logging.INFO,
            f"task dispatched to {node} (attempt {attempt})",
            "dispatched",
            attempt=attempt,
            queued_s=t.durations(self.clock())["queued_s"],
        )

    def landed(self, uuid: str, node: str) -> None:
        t = self._track(uuid)
        t.node, t.state = node, "on node"
        if t.dispatched is None:
            t.dispatched = self.clock()
        t.landed = self.clock()
        d = t.durations(t.landed)
        self._log(t, logging.INFO, f"task on {node}", "landed", uploading_s=d["uploading_s"])

    def status(self, uuid: str, code: Any) -> None:
        """A node said how the task is: log running once, then how it ended, once."""
        t = self.tasks.get(uuid)
        if t is None or t.ended is not None or not isinstance(code, int):
            return
        if code == int(TaskStatus.RUNNING) and t.running is None:
            t.running, t.state = self.clock(), "running"
            self._log(t, logging.INFO, "task running", "running")
        elif code in ENDED:
            self.ended(uuid, ENDED[code])

    def ended(self, uuid: str, how: str, error: str | None = None) -> None:
        """completed / failed / cancelled / removed, with the time spent in each stage."""
        t = self.tasks.get(uuid)
        if t is None:
            return
        if t.ended is not None:
            if how == "removed":  # a removal after the end is its own event
                self._log(t, logging.INFO, "task removed", "removed")
            return
        t.ended, t.state, t.place = self.clock(), how, None
        self.series.finished += 1
        level = logging.WARNING if how == "failed" else logging.INFO
        self._log(t, level, f"task {how}", how, error=error, **t.durations(t.ended))

    def downloaded(self, uuid: str, asset: str, size: int, seconds: float) -> None:
        t = self.tasks.get(uuid) or Timeline(uuid)
        self._log(
            t,
            logging.INFO,
            f"task download of {asset}: {size} bytes",
            "downloaded",
            asset=asset,
            bytes=size,
            seconds=round(seconds, 3),
        )

    def moved(self, uuid: str, from_node: str, why: str, move: int) -> None:
        t = self._track(uuid)
        self._log(
            t, logging.WARNING, f"task moved off {from_node}: {why}", "moved", move=move, reason=why
        )
        t.state, t.landed, t.running, t.dispatched = "moving", None, None, None

    # --- watching ---------------------------------------------------------------------------
    def unfinished(self) -> list[Timeline]:
        return [t for t in self.tasks.values() if t.ended is None and t.landed is not None]

    async def watch_once(self, client: InfoSource, node_of: Callable[[str], Node | None]) -> None:
        """Ask each unfinished task's node how it is (bounded; a slow node is skipped)."""
        gate = asyncio.Semaphore(WATCH_CONCURRENCY)

        async def one(t: Timeline) -> None:
            node = node_of(t.node)
            if node is None:
                return
            async with gate:
                try:
                    async with timeout(WATCH_TIMEOUT_S):
                        info = await client.task_info(node, t.uuid)
                except (NodeError, TimeoutError, asyncio.TimeoutError):
                    return
            status = info.get("status") if isinstance(info, dict) else None
            code = status.get("code") if isinstance(status, dict) else None
            error = status.get("errorMessage") if isinstance(status, dict) else None
            if code == int(TaskStatus.FAILED):
                self.ended(t.uuid, "failed", error if isinstance(error, str) else None)
            else:
                self.status(t.uuid, code)

        await asyncio.gather(*(one(t) for t in self.unfinished()))

    def running_count(self) -> int:
        return len(self.unfinished())
