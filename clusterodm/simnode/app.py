"""The aiohttp application: middlewares (faults, CORS, 404, token, errors) and node routes.

Errors follow NodeODM's conventions: HTTP 200 with ``{"error": ...}`` for nearly everything,
Express's HTML 404 for unknown routes, 204 for CORS preflight. Task routes live in
:mod:`task_api`. Nothing here imports the rest of ``clusterodm``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from aiohttp import web

from .config import SimNodeConfig
from .jsvalues import JsonError, dumps
from .options import OptionsError, node_options_body
from .staging import FormError, Staging
from .tasks import TaskManager, TaskNotFound
from .webhook import WebhookSender

log = logging.getLogger(__name__)

API_VERSION = "2.2.4"
_HANG_POLL_S = 0.02
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Answered as NodeODM does: HTTP 200, ``{"error": message, **extra}``."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


@dataclass
class NodeContext:
    """Everything the handlers share; one per running node."""

    config: SimNodeConfig
    root: Path
    tasks: TaskManager
    staging: Staging
    webhooks: WebhookSender
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    upload_requests: int = 0
    good_uploads: int = 0
    #: requests received, by path (every method, answered or not): what a proxy costs the node
    requests: Counter[str] = field(default_factory=Counter)
    _memory_cache: tuple[float, int, int] = (0.0, 0, 0)

    def memory(self) -> tuple[int, int]:
        """(total, available) bytes, re-read at most once a second."""
        at, total, available = self._memory_cache
        if time.monotonic() - at > 1.0:
            total, available = _read_memory()
            self._memory_cache = (time.monotonic(), total, available)
        return total, available


CONTEXT = web.AppKey("simnode_context", NodeContext)


def _read_memory() -> tuple[int, int]:
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = values.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, values.get("MemAvailable", total)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=dumps(body), status=status, content_type="application/json", charset="utf-8"
    )


def error_response(message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra})


def ctx(request: web.Request) -> NodeContext:
    return request.app[CONTEXT]


# -- middlewares (outermost first) --------------------------------------------------------------


@web.middleware
async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Fault knobs: hang until released or stopped; answer garbage instead of JSON."""
    context = ctx(request)
    context.requests[request.path] += 1
    # The knob is a plain attribute flipped by tests, so it is polled rather than awaited.
    while context.config.hang and not context.stopping.is_set():  # noqa: ASYNC110
        await asyncio.sleep(_HANG_POLL_S)
    if context.config.garbage:
        return web.Response(text="<html>garbled \x00 reply", content_type="application/json")
    return await handler(request)


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflight as Express's cors() does; other answers get the header on prepare."""
    if request.method == "OPTIONS":
        headers = {
            "Access-Control-Allow-Methods": "GET,HEAD,PUT,PATCH,POST,DELETE",
            "Vary": "Access-Control-Request-Headers",
        }
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            headers["Access-Control-Allow-Headers"] = requested
        return web.Response(status=204, headers=headers)
    return await handler(request)


def express_not_found(request: web.Request) -> web.Response:
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n'
        f"</head>\n<body>\n<pre>Cannot {request.method} {escape(request.path)}</pre>\n"
        "</body>\n</html>\n"
    )
    return web.Response(status=404, text=page, content_type="text/html", charset="utf-8")


@web.middleware
async def not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes (and wrong methods) get Express's 404 page, before any token check."""
    if request.match_info.http_exception is not None:
        return express_not_found(request)
    return await handler(request)


@web.middleware
async def token_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``?token=`` on every route but ``/`` and ``/auth/*``; a mismatch is an HTTP 200 error."""
    token = ctx(request).config.token
    open_route = request.path == "/" or request.path.startswith("/auth/")
    if token and not open_route and request.query.get("token") != token:
        return error_response("Invalid authentication token: token does not match.")
    return await handler(request)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into NodeODM's ``{"error"}`` answer: never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ApiError as error:
        return error_response(str(error), **error.extra)
    except JsonError as error:  # V8's wording, quotes included
        return error_response(str(error))
    except (TaskNotFound, FormError, OptionsError) as error:
        return error_response(str(error).strip("'\""))
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception as error:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(str(error) or type(error).__name__)


#: seconds an idle kept-alive connection stays open (Node's http server: 5 s, and it says so)
KEEP_ALIVE_S = 5


async def _cors_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Access-Control-Allow-Origin"] = "*"
    if request.keep_alive and response.keep_alive is not False:
        response.headers["Keep-Alive"] = f"timeout={KEEP_ALIVE_S}"


# -- node routes ---------------------------------------------------------------------------------

_HOME = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SimNode</title></head>
<body><h1>NodeODM-compatible simulated node</h1>
<p>API version {version}.</p></body></html>
"""
_HOME_BODY = _HOME.format(version=API_VERSION).encode()
#: NodeODM's web UI is static files served by Express: a weak ETag of size and mtime, a
#: Last-Modified, and 304 to a matching If-None-Match (a browser reload sends one)
_HOME_ETAG = f'W/"{len(_HOME_BODY):x}-{zlib.crc32(_HOME_BODY):x}"'
_HOME_MODIFIED = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


async def home(request: web.Request) -> web.Response:
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": "public, max-age=0",
        "Last-Modified": _HOME_MODIFIED,
        "ETag": _HOME_ETAG,
    }
    wanted = request.headers.get("If-None-Match", "")
    if _HOME_ETAG in (tag.strip() for tag in wanted.split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=_HOME_BODY, content_type="text/html", charset="UTF-8", headers=headers)


async def info(request: web.Request) -> web.Response:
    context = ctx(request)
    if request.query.get("_debugUnauthorized") == "1":
        return web.Response(status=401)
    total, available = context.memory()
    return json_response(
        {
            "version": API_VERSION,
            "taskQueueCount": context.tasks.queue_count(),
            "totalMemory": total,
            "availableMemory": available,
            "cpuCores": os.cpu_count() or 1,
            "maxImages": context.config.max_images,
            "maxParallelTasks": context.config.parallel,
            "engineVersion": "?",
            "engine": "odm",
        }
    )


async def options(request: web.Request) -> web.Response:
    return web.Response(body=node_options_body(), content_type="application/json", charset="utf-8")


async def auth_info(request: web.Request) -> web.Response:
    return json_response(
        {
            "message": "Authentication not available on this node",
            "loginUrl": None,
            "registerUrl": None,
        }
    )


async def auth_not_available(request: web.Request) -> web.Response:
    return error_response("Not available")


def make_app(context: NodeContext) -> web.Application:
    """The node's application; ``context`` is shared with the :class:`SimNode` that owns it."""
    from . import task_api  # routes depend on helpers above

    app = web.Application(
        middlewares=[faults, cors, not_found, token_check, errors],
        client_max_size=1024**4,  # uploads are streamed; no body is read whole
    )
    app[CONTEXT] = context
    app.on_response_prepare.append(_cors_header)
    app.router.add_get("/", home)
    app.router.add_get("/info", info)
    app.router.add_get("/options", options)
    app.router.add_get("/auth/info", auth_info)
    app.router.add_post("/auth/login", auth_not_available)
    app.router.add_post("/auth/register", auth_not_available)
    task_api.add_routes(app.router)
    return app
