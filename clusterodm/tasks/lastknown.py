"""The last state each task's node reported, for polls the node does not answer in time.

A frozen or overloaded node must not hang a client's poll, nor make a running task look as if
it started again (status 20, progress 0). Every ``/task/<uuid>/info`` answer a node gives
through the proxy is kept here as the raw bytes it sent (no parse on the hot path; small
answers only, a bounded number of tasks, oldest forgotten first). When the node does not answer
within the poll limit, or is offline, the poll gets that answer back, marked: ``"lastKnown"``
holds when it was seen, and an asked-for output gets one line saying so.
"""

from __future__ import annotations

import json
import time
from typing import Any

from clusterodm.model import TaskEntry

MAX_TASKS = 20_000
MAX_BODY_BYTES = 16 * 1024  # an info answer with a long output is not kept (memory bound)


class LastKnown:
    def __init__(self, max_tasks: int = MAX_TASKS) -> None:
        self.max_tasks = max_tasks
        self._infos: dict[str, tuple[float, bytes]] = {}

    def __contains__(self, uuid: str) -> bool:
        return uuid in self._infos

    def note(self, uuid: str, body: bytes) -> None:
        """A node's ``200`` answer to ``/task/<uuid>/info``, as sent (uncompressed)."""
        if len(body) > MAX_BODY_BYTES:
            return
        self._infos.pop(uuid, None)  # re-inserted: the oldest entry is the least polled
        self._infos[uuid] = (time.time(), body)
        if len(self._infos) > self.max_tasks:
            del self._infos[next(iter(self._infos))]

    def forget(self, uuid: str) -> None:
        self._infos.pop(uuid, None)

    def info(
        self, uuid: str, node_key: str, held: TaskEntry | None, with_output: int | None
    ) -> dict[str, Any] | None:
        """The task's last known info, marked; from the proxy's own entry when no node answer
        was kept; None when there is neither."""
        seen = self._infos.get(uuid)
        data: Any = None
        at = time.time()
        if seen is not None:
            at = seen[0]
            try:
                data = json.loads(seen[1])
            except ValueError:
                data = None
        lines: list[str] = []
        if not isinstance(data, dict) or data.get("uuid") != uuid:
            if held is None:
                return None
            data = held.info_json(int(time.time() * 1000), with_output)
            lines = list(data.get("output", []))
        data.pop("output", None)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        data["lastKnown"] = {"node": node_key, "at": stamp}
        if with_output is not None:
            data["output"] = [*lines, marker(node_key, stamp)]
        return data


def marker(node_key: str, stamp: str) -> str:
    return (
        f"[ClusterODM] node {node_key} did not answer in time; "
        f"this is the task's state as last known at {stamp}"
    )
