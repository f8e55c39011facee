"""Model values <-> JSON, shared by the store backends so both write the same values.

The SQLite store keeps one column per field and JSON for the nested ones (``info``, ``machine``,
``fields``, ``options``, ``output``, ``files``); the Redis store keeps one JSON record per value
with the same field names and the same encodings: a task's stage by its value, its status as the
NodeODM code, a node's info as its ``/info`` answer, tuples as lists. Times stay integers (ms).

Pure functions over ``model`` and the standard library; no I/O. Decoding errors surface as
``ValueError``/``TypeError``/``KeyError``, which each backend turns into ``StoreError``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from clusterodm.model import Node, NodeInfo, StagedUpload, TaskEntry, TaskStage, TaskStatus

log = logging.getLogger(__name__)


def dump_json(value: Any) -> str:
    """Compact JSON, as every stored value is written."""
    return json.dumps(value, separators=(",", ":"))


def info_from_data(data: Any) -> NodeInfo | None:
    """A stored /info that no longer parses is dropped: the next refresh fetches it again."""
    if data is None:
        return None
    try:
        return NodeInfo.from_json(data)
    except ValueError:
        log.warning("dropping unreadable stored node info: %.80s", data)
        return None


def info_from_text(text: str | None) -> NodeInfo | None:
    """``info_from_data`` for the JSON text of a column; unreadable text is dropped the same way."""
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("dropping unreadable stored node info: %.80s", text)
        return None
    return info_from_data(data)


# --- records: one JSON object per value (the Redis store's values, written with dump_json) ---


def node_record(node: Node) -> dict[str, Any]:
    return {
        "hostname": node.hostname,
        "port": node.port,
        "token": node.token,
        "locked": node.locked,
        "info": None if node.info is None else node.info.to_json(),
        "last_refreshed_ms": node.last_refreshed_ms,
        "machine": node.machine,
        "discovered": node.discovered,
        "draining": node.draining,
    }


def node_from_record(r: dict[str, Any]) -> Node:
    return Node(
        hostname=r["hostname"],
        port=r["port"],
        token=r["token"],
        locked=bool(r["locked"]),
        info=info_from_data(r["info"]),
        last_refreshed_ms=r["last_refreshed_ms"],
        machine=r["machine"],
        discovered=str(r.get("discovered") or ""),
        draining=bool(r.get("draining", False)),
    )


def task_record(task: TaskEntry) -> dict[str, Any]:
    return {
        "uuid": task.uuid,
        "owner": task.owner,
        "stage": task.stage.value,
        "status": int(task.status),
        "name": task.name,
        "date_created_ms": task.date_created_ms,
        "fields": task.fields,
        "options": task.options,
        "images_count": task.images_count,
        "output": list(task.output),
        "error_message": task.error_message,
        "node_key": task.node_key,
        "started_ms": task.started_ms,
        "attempts": task.attempts,
        "progress": task.progress,
        "failovers": task.failovers,
    }


def task_from_record(r: dict[str, Any]) -> TaskEntry:
    return TaskEntry(
        uuid=r["uuid"],
        owner=r["owner"],
        stage=TaskStage(r["stage"]),
        status=TaskStatus(r["status"]),
        name=r["name"],
        date_created_ms=r["date_created_ms"],
        fields=r["fields"],
        options=r["options"],
        images_count=r["images_count"],
        output=tuple(r["output"]),
        error_message=r["error_message"],
        node_key=r["node_key"],
        started_ms=r["started_ms"],
        attempts=r["attempts"],
        progress=r["progress"],
        failovers=r.get("failovers", 0),
    )


def upload_record(upload: StagedUpload) -> dict[str, Any]:
    return {
        "uuid": upload.uuid,
        "owner": upload.owner,
        "fields": upload.fields,
        "options": upload.options,
        "created_ms": upload.created_ms,
        "last_upload_ms": upload.last_upload_ms,
        "files": list(upload.files),
    }


def upload_from_record(r: dict[str, Any]) -> StagedUpload:
    return StagedUpload(
        uuid=r["uuid"],
        owner=r["owner"],
        fields=r["fields"],
        options=r["options"],
        created_ms=r["created_ms"],
        last_upload_ms=r["last_upload_ms"],
        files=tuple(r["files"]),
    )
