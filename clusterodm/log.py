"""Logging set-up: the original's level names mapped to stdlib levels, one line per event.

Every line carries the task and node it is about, when there is one: ``uuid=`` and ``node=``
come from context variables that the dispatcher and the task endpoints set, so a grep for a
uuid finds the whole story of a task across the proxy's parts.
"""

from __future__ import annotations

import contextvars
import logging
import sys

LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "verbose": logging.INFO - 5,
    "debug": logging.DEBUG,
    "silly": logging.DEBUG - 5,
}

task_uuid: contextvars.ContextVar[str] = contextvars.ContextVar("task_uuid", default="")
node_key: contextvars.ContextVar[str] = contextvars.ContextVar("node_key", default="")


class ContextFormatter(logging.Formatter):
    """``time LEVEL logger: message uuid=... node=...`` with the context fields that are set."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = []
        if uuid := task_uuid.get():
            extra.append(f"uuid={uuid}")
        if node := node_key.get():
            extra.append(f"node={node}")
        return f"{line} {' '.join(extra)}" if extra else line


def setup(level: str = "info") -> None:
    logging.addLevelName(LEVELS["verbose"], "VERBOSE")
    logging.addLevelName(LEVELS["silly"], "SILLY")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
