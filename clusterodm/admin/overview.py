"""What the admin page shows beyond the original's ``/r/`` fields: node capacity and load,
tasks per node, why a node is offline; per task its user, place in the queue and time queued
and running; and the cluster's recent history for the charts.

Pure reads of the running cluster (registry, routes, task table, queue, ``TaskEvents``); the
web front (``web.py``) merges these into its answers. Nothing here talks to a node.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from clusterodm.admin.commands import AdminCommands, NodeView
from clusterodm.model import TaskStage

_SENDING = (TaskStage.DISPATCHING, TaskStage.LANDED)


def tasks_per_node(cmds: AdminCommands) -> Counter[str]:
    """Tasks routed to each node, plus those being sent to it."""
    count: Counter[str] = Counter(r.node_key for r in cmds.deps.routes.all())
    routed = cmds.deps.routes.get
    for task in cmds.deps.table.all():
        if task.node_key and task.stage in _SENDING and routed(task.uuid) is None:
            count[task.node_key] += 1
    return count


def offline_reason(cmds: AdminCommands, view: NodeView, now_ms: int) -> str | None:
    """None for an online node; else the last error, or what is missing."""
    if view.online:
        return None
    reg = cmds.deps.registry
    why = reg.offline_reasons.get(view.node.key)
    if why:
        return why
    if view.node.info is None:
        return "no answer to /info yet"
    age_s = max(0, now_ms - view.node.last_refreshed_ms) // 1000
    return f"no good /info answer for {age_s} s"


def capacity(view: NodeView) -> dict[str, Any]:
    """From the node's last ``/info``: what it accepts and what it has free."""
    info = view.node.info
    if info is None:
        return {}
    return {
        "maxImages": info.max_images,
        "maxParallelTasks": info.max_parallel_tasks,
        "taskQueueCount": info.task_queue_count,
        "cpuCores": info.cpu_cores,
        "totalMemory": info.total_memory,
        "availableMemory": info.available_memory,
    }


def node_items(cmds: AdminCommands) -> list[dict[str, Any]]:
    """``/r/node/list`` items with ``capacity``, ``tasks`` and ``offlineReason`` added."""
    now_ms = int(time.time() * 1000)
    on_node = tasks_per_node(cmds)
    items = []
    for view in cmds.nodes():
        item = view.list_item()
        item["capacity"] = capacity(view)
        item["tasks"] = on_node.get(view.node.key, 0)
        item["offlineReason"] = offline_reason(cmds, view, now_ms)
        items.append(item)
    return items


def add_task_details(cmds: AdminCommands, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ``/r/tasks`` row gets ``user``, ``place`` (1 = next to start), ``queueLength``,
    ``queuedS`` and ``runningS`` (None when unknown)."""
    order = cmds.deps.dispatcher.queue_order()
    places = {w.uuid: i for i, w in enumerate(order, 1)}
    events = cmds.deps.events
    now = events.clock()
    for row in rows:
        uuid = row["uuid"]
        timeline = events.get(uuid)
        view = timeline.view(now) if timeline is not None else {}
        row["user"] = view.get("user") or None
        row["place"] = places.get(uuid)
        row["queueLength"] = len(order)
        row["queuedS"] = view.get("queuedS")
        running = view.get("runningS")
        processing = row.get("processingTime")
        if running is None and isinstance(processing, int | float) and processing >= 0:
            running = round(processing / 1000, 3)  # as the node counts it
        row["runningS"] = running
        row["progress"] = _number(row.get("progress"))
    return rows


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return round(float(value), 1)


def series(cmds: AdminCommands) -> dict[str, Any]:
    """The sampled time series and what is true now (the charts' last point)."""
    events = cmds.deps.events
    out = events.series.json()
    out["now"] = {
        "t": round(events.clock(), 3),
        "queue": cmds.deps.dispatcher.queue_length(),
        "running": events.running_count(),
    }
    return out
