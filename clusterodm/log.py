"""Logging set-up: the original's level names mapped to stdlib levels, one line per event.

Every line carries the task and node it is about, when there is one: ``uuid=`` and ``node=``
come from context variables that the dispatcher and the task endpoints set, so a grep for a
uuid finds the whole story of a task across the proxy's parts.
"""

from __future__ import annotations

import contextvars
import logging
import sys

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

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


class BadRequestLines(logging.Filter):
    """aiohttp's server logs every request it cannot parse at ERROR with a traceback (and a
    body it cannot decode, met after the answer, as "Unhandled exception"); anyone who can
    connect could fill the log that way. Such a record becomes one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            # a body that breaks after the answer was sent comes as "Unhandled exception"
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed HTTP request from %s: %s"
            record.args = (remote, _first_line(exc))
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return text or type(exc).__name__


_BAD_REQUESTS = BadRequestLines()


def quiet_bad_requests() -> None:
    """Install ``BadRequestLines`` on aiohttp's server logger (once; idempotent)."""
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_REQUESTS not in server_log.filters:
        server_log.addFilter(_BAD_REQUESTS)


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
