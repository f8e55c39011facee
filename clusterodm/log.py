"""Logging set-up: the original's level names mapped to stdlib levels, one line per event.

Every line carries the task, node and user it is about, when there is one: ``uuid``, ``node``
and ``user`` come from context variables that the dispatcher and the task endpoints set, or from
the ``fields`` a call passes (``extra={"fields": {...}}``, see ``event``), so a grep for a uuid
finds the whole story of a task across the proxy's parts.

Two formats (``--log-format``): ``text``, one readable line ending in ``key=value`` pairs, and
``json``, one object per line for Loki or ELK. Both stamp ISO 8601 times with milliseconds and
the zone (``2026-01-02T03:04:05.678+00:00``). At ``verbose`` every HTTP request is logged too
(``AccessLog``), without its query string, which may hold a token.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse
from aiohttp.web_protocol import RequestPayloadError

LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "verbose": logging.INFO - 5,
    "debug": logging.DEBUG,
    "silly": logging.DEBUG - 5,
}
VERBOSE = LEVELS["verbose"]

task_uuid: contextvars.ContextVar[str] = contextvars.ContextVar("task_uuid", default="")
node_key: contextvars.ContextVar[str] = contextvars.ContextVar("node_key", default="")
user_name: contextvars.ContextVar[str] = contextvars.ContextVar("user_name", default="")

CONTEXT_KEYS = ("uuid", "node", "user")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``uuid``/``node``/``user`` (given ones win over the context) and its
    other fields, in that order; empty values are left out."""
    given: dict[str, Any] = getattr(record, "fields", None) or {}
    out: dict[str, Any] = {}
    for key, var in zip(CONTEXT_KEYS, (task_uuid, node_key, user_name), strict=True):
        value = given.get(key) or var.get()
        if value:
            out[key] = value
    for key, value in given.items():
        if key not in CONTEXT_KEYS and value is not None:
            out[key] = value
    return out


def iso_time(created: float) -> str:
    """Local time with milliseconds and the zone offset."""
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        value = round(value, 3)
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


class ContextFormatter(logging.Formatter):
    """``time LEVEL logger: message uuid=... node=... user=... key=value...``"""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={_text_value(v)}" for k, v in record_fields(record).items())
        if not extra:
            return super().format(record)
        # the fields end the first line; a traceback, if any, follows them
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            line = f"{super().format(record)} {extra}"
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, the context and event fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            obj.setdefault(key, value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def event(logger: logging.Logger, level: int, msg: str, /, **fields: Any) -> None:
    """Log one event line: ``msg`` and named fields (``event=...``, ``uuid=...``, numbers)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})


class AccessLog(AbstractAccessLogger):
    """One ``verbose`` line per HTTP request: method, path (no query), status, bytes, time."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        event(
            self.logger,
            VERBOSE,
            f"{request.method} {request.path} {response.status}",
            event="http",
            remote=request.remote,
            bytes=response.body_length,
            ms=round(time * 1000, 1),
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(VERBOSE)


def access_log_enabled() -> bool:
    return logging.getLogger("aiohttp.access").isEnabledFor(VERBOSE)


def make_formatter(fmt: str = "text") -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup(level: str = "info", fmt: str = "text") -> None:
    logging.addLevelName(VERBOSE, "VERBOSE")
    logging.addLevelName(LEVELS["silly"], "SILLY")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)
