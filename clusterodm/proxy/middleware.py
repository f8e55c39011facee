"""The proxy's one middleware: metrics, the token check, CORS, and the one place where errors
become NodeODM-style replies.

``ClusterError`` -> ``{"error": "..."}`` with the family's status (200 as NodeODM does, 401 for
auth). Anything unexpected is logged with its traceback and answered with a JSON error, never
the traceback itself. Once a streamed response has started nothing can be sent: it is aborted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from clusterodm.access.guard import AuthUnavailable, TooManyFailures
from clusterodm.errors import AuthError, ClusterError
from clusterodm.metrics import Metrics
from clusterodm.proxy.deps import USER, deps
from clusterodm.proxy.observe import RequestCounter, name_task

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


def proxy_middleware(metrics: Metrics) -> Middleware:
    """The proxy's one middleware. Outermost first, it counts the request for ``/metrics``
    (``observe.py``), turns errors into NodeODM replies, answers CORS preflights and checks the
    token; every answer it returns or raises gets the CORS headers. A handler that prepares its
    own (streamed) response adds them itself first (``forward.py``).

    One layer rather than four: each layer, and the ``on_response_prepare`` signal, cost a
    coroutine per request.
    """
    counter = RequestCounter(metrics)

    @web.middleware
    async def proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
        name_task(request)
        status = 500
        response: web.StreamResponse | None = None
        try:
            try:
                if request.method == "OPTIONS":
                    response = _preflight(request)
                else:
                    response = await _authorise(request) or await handler(request)
            except ClusterError as e:
                response = json_error(e.message, e.status)
            except web.HTTPException as e:
                response = _http_error(request, e)
                if response is None:
                    raise
            except ConnectionResetError:
                raise
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.path)
                response = json_error("Internal error; the cluster logged the details.", 500)
            if not response.prepared:
                add_cors_headers(request, response)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            add_cors_headers(request, e)
            raise
        finally:
            counter.count(request, status, response)

    return proxy


def _http_error(request: web.Request, e: web.HTTPException) -> web.Response | None:
    """aiohttp's own 404, 405 and 413 as NodeODM-style JSON; None for the others (redirects)."""
    if e.status in (404, 405):
        return json_error(f"Cannot {request.method} {request.path}", e.status)
    if e.status == 413:
        return json_error("Request too large", 413)
    return None


def _preflight(request: web.Request) -> web.Response:
    resp = web.Response(status=204)
    req_method = request.headers.get("Access-Control-Request-Method")
    req_headers = request.headers.get("Access-Control-Request-Headers")
    resp.headers["Access-Control-Allow-Methods"] = req_method or "GET,HEAD,PUT,PATCH,POST,DELETE"
    if req_headers:
        resp.headers["Access-Control-Allow-Headers"] = req_headers
    return resp


def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    else:
        response.headers["Access-Control-Allow-Origin"] = "*"


async def _authorise(request: web.Request) -> web.Response | None:
    """Every request but the public ones must carry a valid ``?token=``; AuthError (401)
    otherwise. Sets the request's user; None to go on, or the answer that ends the request.

    An address that sent too many wrong tokens lately gets 429 instead, without its token being
    checked (``access/guard.py``).
    """
    d = deps(request)
    access = d.access
    token = request.query.get("token", "")
    if is_public(request.path):
        # public paths answer without a valid token; the user is known only when it is valid
        with contextlib.suppress(ClusterError):
            request[USER] = await access.authenticate(token)
        return None
    guard = d.guard
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
    return None
