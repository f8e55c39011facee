"""Domain values shared by every layer: nodes, routes, tasks, uploads. Standard library only.

Times are integers in milliseconds since the epoch (``*_ms``), as NodeODM and the original's
state files use them; JSON keys are camelCase only where a value crosses the edge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from clusterodm.compat import StrEnum

UUID_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-7][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE
)
"""What NodeODM accepts in ``set-uuid`` (versions 1 to 7, RFC variant)."""

ANY_UUID_RE = re.compile(r"^[0-9a-fA-F-]{1,64}$")
"""Loose shape check for uuids in paths: anything else is refused before a lookup."""


def is_valid_uuid(value: str) -> bool:
    return bool(UUID_RE.match(value))


class TaskStatus(IntEnum):
    """NodeODM status codes."""

    QUEUED = 10
    RUNNING = 20
    FAILED = 30
    COMPLETED = 40
    CANCELED = 50

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.CANCELED)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's ``GET /info`` answer, typed. ``raw`` keeps what it sent, for ``NODE INFO``."""

    version: str = ""
    task_queue_count: int = 0
    max_parallel_tasks: int = 1
    max_images: int | None = None
    engine: str = "odm"
    engine_version: str = "?"
    total_memory: int | None = None
    available_memory: int | None = None
    cpu_cores: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeInfo:
        """Parse leniently (nodes in the wild send odd types); unusable input raises ValueError."""
        if not isinstance(data, dict) or "version" not in data:
            raise ValueError("not a NodeODM /info answer")

        def opt_int(key: str) -> int | None:
            v = data.get(key)
            if v is None or isinstance(v, bool):
                return None
            return int(v)

        return cls(
            version=str(data.get("version", "")),
            task_queue_count=opt_int("taskQueueCount") or 0,
            max_parallel_tasks=opt_int("maxParallelTasks") or 1,
            max_images=opt_int("maxImages"),
            engine=str(data.get("engine", "odm")),
            engine_version=str(data.get("engineVersion", "?")),
            total_memory=opt_int("totalMemory"),
            available_memory=opt_int("availableMemory"),
            cpu_cores=opt_int("cpuCores"),
            raw=dict(data),
        )

    def to_json(self) -> dict[str, Any]:
        if self.raw:
            return dict(self.raw)
        return {
            "version": self.version,
            "taskQueueCount": self.task_queue_count,
            "totalMemory": self.total_memory,
            "availableMemory": self.available_memory,
            "cpuCores": self.cpu_cores,
            "maxImages": self.max_images,
            "maxParallelTasks": self.max_parallel_tasks,
            "engineVersion": self.engine_version,
            "engine": self.engine,
        }


def node_key(hostname: str, port: int) -> str:
    """A node's identity: ``host:port``, as the original names nodes."""
    return f"{hostname}:{port}"


@dataclass(frozen=True, slots=True)
class Node:
    """A node as stored: address, node token, admin flags and its last known ``/info``.

    ``machine`` holds the autoscaler's record for auto-spawned nodes (None for static ones).
    ``discovered`` names the ``--nodes-from`` source that found the node ("" for nodes added by
    hand); ``draining`` is set once that source stops listing it: no new tasks, and it leaves
    when its tasks are done (``nodes/discovery.py``).
    """

    hostname: str
    port: int
    token: str = ""
    locked: bool = False
    info: NodeInfo | None = None
    last_refreshed_ms: int = 0
    machine: dict[str, Any] | None = None
    discovered: str = ""
    draining: bool = False

    @property
    def key(self) -> str:
        return node_key(self.hostname, self.port)

    @property
    def auto_spawned(self) -> bool:
        return self.machine is not None

    @property
    def base_url(self) -> str:
        """https only on port 443, as the original and pyodm decide."""
        scheme = "https" if self.port == 443 else "http"
        host = self.hostname
        if ":" in host and not host.startswith("["):  # records from before brackets were kept
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    """uuid -> node binding. ``owner`` is the token that created the task ('' = shared)."""

    uuid: str
    node_key: str
    owner: str = ""
    accessed_ms: int = 0


class TaskStage(StrEnum):
    """Where a task still held by the proxy is in its journey to a node."""

    COMMITTED = "committed"  # committed by the client, waiting for (or in) dispatch
    DISPATCHING = "dispatching"  # being forwarded to ``node_key``
    QUEUED = "queued"  # waiting at the proxy for a free slot
    FAILED = "failed"  # dispatch gave up; kept so the client can read the error
    FINISHED = "finished"  # kept after its node went away (autoscaler teardown)
    LANDED = "landed"  # on a node; images kept so the task can move if the node dies


@dataclass(frozen=True, slots=True)
class Waiting:
    """A task waiting at the proxy for a slot (``tasks/queue.py`` orders them)."""

    uuid: str
    owner: str
    images: int
    seq: int  # arrival order in the queue
    tag: float = 0.0  # fair-queuing tag (see ``tasks/queue.py``)


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """A task-table entry: a task the proxy answers for itself (not, or no longer, on a node)."""

    uuid: str
    owner: str
    stage: TaskStage
    status: TaskStatus
    name: str | None
    date_created_ms: int
    fields: dict[str, Any]  # the init fields, as the client sent them (name, options, webhook...)
    options: list[dict[str, Any]]  # validated and augmented options
    images_count: int = 0
    output: tuple[str, ...] = ()
    error_message: str | None = None
    node_key: str | None = None
    started_ms: int | None = None
    attempts: int = 0
    progress: float = 0.0
    failovers: int = 0  # times the task was moved off a node that died or lost it

    def info_json(self, now_ms: int, with_output: int | None = None) -> dict[str, Any]:
        """The ``/task/<uuid>/info`` answer for a task the proxy holds."""
        status: dict[str, Any] = {"code": int(self.status)}
        if self.error_message:
            status["errorMessage"] = self.error_message
        processing = -1 if self.started_ms is None else max(0, now_ms - self.started_ms)
        out: dict[str, Any] = {"uuid": self.uuid}
        if self.name is not None:
            out["name"] = self.name
        out.update(
            {
                "dateCreated": self.date_created_ms,
                "processingTime": processing,
                "status": status,
                "options": list(self.options),
                "imagesCount": self.images_count,
                "progress": self.progress,
            }
        )
        if with_output is not None:
            out["output"] = slice_lines(list(self.output), with_output)
        return out


@dataclass(frozen=True, slots=True)
class StagedUpload:
    """An upload in progress at the proxy: init received, not yet committed."""

    uuid: str
    owner: str
    fields: dict[str, Any]
    options: list[dict[str, Any]]
    created_ms: int
    last_upload_ms: int  # as of init; the staging folder's times say when files arrived
    files: tuple[str, ...] = ()  # kept across a re-init; the staging folder lists the rest


def slice_lines(lines: list[str], line: int) -> list[str]:
    """NodeODM's ``line`` semantics: JavaScript ``Array.slice(N)``; negative = last |N| lines."""
    if line >= 0:
        return lines[line:]
    return lines[line:] if -line < len(lines) else list(lines)


def parse_line(value: str | None) -> int:
    """``line=`` as NodeODM reads it: missing or non-numeric is 0, fractions truncate."""
    if value is None:
        return 0
    m = _LINE.match(value)
    if not m:
        return 0
    digits = m.group(1)
    if len(digits) > 16:  # past any output's length; parseInt would give +-Infinity
        return -LINE_BEYOND if digits.startswith("-") else LINE_BEYOND
    return int(digits)


#: ASCII digits only, as parseInt reads them (``\d`` alone would take ``٣``)
_LINE = re.compile(r"^\s*([+-]?[0-9]+)")
LINE_BEYOND = 2**53
