"""Token check, CORS, and the one place where errors become NodeODM-style replies.

``ClusterError`` -> ``{"error": "..."}`` with the family's status (200 as NodeODM does, 401 for
auth). Anything unexpected is logged with its traceback and answered with a JSON error, never
the traceback itself. Once a streamed response has started nothing can be sent: it is aborted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from clusterodm.access.guard import AuthUnavailable, TooManyFailures
from clusterodm.errors import AuthError, ClusterError
from clusterodm.proxy.deps import USER, deps

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: paths anyone may read: the auth endpoints, the webhook, the node's web UI and its assets
PUBLIC_PATHS = frozenset({"/", "/auth/info", "/auth/login", "/auth/register", "/commit"})
PUBLIC_SUFFIXES = (".css", ".js", ".woff", ".woff2", ".ttf", ".ico", ".png", ".svg", ".map")


def json_error(message: str, status: int = 200) -> web.Response:
    return web.json_response({"error": message}, status=status)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or (
        not path.startswith("/task/") and path.lower().endswith(PUBLIC_SUFFIXES)
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ClusterError as e:
        return json_error(e.message, e.status)
    except web.HTTPException as e:
        if e.status == 404:
            return json_error(f"Cannot {request.method} {request.path}", 404)
        if e.status == 405:
            return json_error(f"Cannot {request.method} {request.path}", 405)
        if e.status == 413:
            return json_error("Request too large", 413)
        raise
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error("Internal error; the cluster logged the details.", 500)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Preflight answered here; other responses get their headers in ``add_cors_headers``."""
    if request.method == "OPTIONS":
        resp = web.Response(status=204)
        req_method = request.headers.get("Access-Control-Request-Method")
        req_headers = request.headers.get("Access-Control-Request-Headers")
        resp.headers["Access-Control-Allow-Methods"] = (
            req_method or "GET,HEAD,PUT,PATCH,POST,DELETE"
        )
        if req_headers:
            resp.headers["Access-Control-Allow-Headers"] = req_headers
        return resp
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    else:
        response.headers["Access-Control-Allow-Origin"] = "*"


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request but the public ones must carry a valid ``?token=``; 401 otherwise.

    An address that sent too many wrong tokens lately gets 429 instead, without its token being
    checked (``access/guard.py``).
    """
    access = deps(request).access
    token = request.query.get("token", "")
    if is_public(request.path):
        # public paths answer without a valid token; the user is known only when it is valid
        with contextlib.suppress(ClusterError):
            request[USER] = await access.authenticate(token)
        return await handler(request)
    guard = deps(request).guard
    ip = request.remote or ""
    try:
        guard.check(ip)
    except TooManyFailures as e:
        return web.json_response(
            {"error": e.message}, status=e.status, headers={"Retry-After": str(e.retry_after_s)}
        )
    try:
        request[USER] = await access.authenticate(token)
    except AuthUnavailable:
        raise
    except AuthError:
        if token:
            guard.failed(ip)
        raise
    return await handler(request)
