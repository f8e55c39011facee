"""The proxy's one middleware: metrics, the token check, CORS, and the one place where errors
become NodeODM-style replies.

``ClusterError`` -> ``{"error": "..."}`` with the family's status (200 as NodeODM does, 401 for
auth). Anything unexpected is logged with its traceback and answered with a JSON error, never
the traceback itself. Once a streamed response has started nothing can be sent: it is aborted.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError

from clusterodm import log as logctx
from clusterodm.access.guard import AuthUnavailable, TooManyFailures
from clusterodm.errors import AuthError, ClusterError
from clusterodm.metrics import Metrics
from clusterodm.nodes.paths import is_ui_file
from clusterodm.proxy.deps import USER, deps
from clusterodm.proxy.observe import RequestCounter, name_task

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: paths anyone may read: the auth endpoints, the webhook; and the node's web UI files
PUBLIC_PATHS = frozenset({"/", "/auth/info", "/auth/login", "/auth/register", "/commit"})
#: longer than any route of the API or file of the web UI
MAX_PATH = 512
#: what a path may hold as sent: the characters of the routes (uuids, words) and of the web UI's
#: file names. No ``%`` (an escape is never needed and could hide a separator, a dot or a
#: ``?``), no ``\``, ``;`` or ``#``, nothing beyond ASCII.
_PATH_CHARS = re.compile(r"/[A-Za-z0-9._~/-]*")


def json_error(message: str, status: int = 200) -> web.Response:
    return web.json_response({"error": message}, status=status)


def sent_path(request: web.Request) -> str:
    """The path exactly as the client sent it, before any decoding or normalising."""
    return request.raw_path.partition("?")[0]


def path_problem(path: str) -> str | None:
    """Why a path as sent is refused (400), or None. With this, the decoded path that aiohttp
    routes on is the sent path itself, so what is judged public is what gets forwarded."""
    if len(path) > MAX_PATH:
        return "Path too long"
    if not _PATH_CHARS.fullmatch(path) or any(s in (".", "..") for s in path.split("/")):
        return "Invalid path"
    return None


def is_public(path: str) -> bool:
    """``path`` as sent: the few public routes, and the node's web UI files (``paths.py``),
    which the catch-all route forwards, and nothing else."""
    return path in PUBLIC_PATHS or is_ui_file(path)


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
                problem = path_problem(sent_path(request))
                if problem is not None:
                    log.info("refused %s %.120r: %s", request.method, request.raw_path, problem)
                    response = json_error(problem, 400)
                elif request.content.exception() is not None:  # the body broke in parsing
                    raise RequestPayloadError(str(request.content.exception()))
                elif request.method == "OPTIONS":
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
            except (RequestPayloadError, HttpProcessingError) as e:
                # the body could not be read as sent (e.g. Content-Encoding: gzip on plain bytes)
                log.info("bad body on %s %s: %s", request.method, request.path, cause_line(e))
                response = json_error("Malformed request body", 400)
                drop_body(request, response)
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.path)
                response = json_error("Internal error; the cluster logged the details.", 500)
            if request.content.exception() is not None:  # a body the handler did not read
                drop_body(request, response)
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


def drop_body(request: web.Request, response: web.StreamResponse) -> None:
    """After a body that cannot be read, the rest of it is not read either: aiohttp would try
    to (to keep the connection), meet the same error again and log it with a traceback. The
    connection closes after the answer instead."""
    if not response.prepared:
        response.force_close()
    if not request.content.is_eof():
        request.content.feed_eof()


def cause_line(e: BaseException) -> str:
    """One line about a body error: aiohttp's message, or the error beneath it."""
    inner = e.__cause__ or e.__context__
    text = str(inner or e) or type(e).__name__
    return " ".join(text.split())[:200] or type(e).__name__


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
    if is_public(sent_path(request)):
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
        request[USER] = user = await access.authenticate(token)
    except AuthUnavailable:
        raise
    except AuthError:
        if token:
            guard.failed(ip)
        raise
    if user.name:
        logctx.user_name.set(user.name)  # this request's lines name its user
    return None
