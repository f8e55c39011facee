"""Admin web: the operator's page and the original's JSON API under ``/r/`` (``--admin-web-port``).

Owns HTTP for the admin: basic auth (user ``admin``, ``--admin-pass``), the page shell
(``templates/index.html``), its static files (``static/``, packaged, no CDN) and the ``/r/*``
endpoints. What a command does lives in ``commands.py``, shared with the CLI.

``/r/`` endpoints (field names as the original's, so its scripts keep working):

    GET    /r/info            {name, version, nodes, onlineNodes, lockedNodes, routes, heldTasks}
    GET    /r/node/list       [{number, name, isLocked, isAutoSpawned, isOnline, ...nodeData}]
    POST   /r/node/add        {hostname, port, token?}   -> {success: true, number}
    DELETE /r/node            {number, name?}            -> true | false
    POST   /r/node/lock       {number, name?}            -> true | false
    POST   /r/node/unlock     {number, name?}            -> true | false
    GET    /r/tasks?limit=N   known tasks: node, status, user, queue place, times (ours)
    POST   /r/task/cancel     {uuid}        -> {success: true} | {error} (ours)
    POST   /r/task/remove     {uuid}        -> {success: true} | {error} (ours)
    GET    /r/routes?limit=N  most recently used routes (ours)
    GET    /r/series          the last hours, sampled: queue, running, finished, bytes (ours)

Node list items also carry ``capacity`` (from the node's ``/info``), ``tasks`` (on the node)
and ``offlineReason`` (ours).

Differences from the original: node tokens are never sent; bad input answers 400
``{"error": ...}`` (original: an empty 403); changes must be sent as JSON (which a foreign web
page cannot do without a CORS preflight we never grant, so a browser tab cannot be tricked into
changing the cluster); an optional ``name`` guards against acting on a renumbered node (409).

Imports ``admin.commands`` and the error families only.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from clusterodm import __version__
from clusterodm import log as logctx
from clusterodm.admin import overview
from clusterodm.admin.commands import NAME, AdminCommands, NodeOutOfRange
from clusterodm.admin.telnet import password_matches
from clusterodm.errors import ClusterError
from clusterodm.metrics import Metrics
from clusterodm.model import is_valid_uuid
from clusterodm.numbers import MAX_DIGITS, BadNumber, parse_decimal
from clusterodm.proxy.middleware import cause_line, drop_body, path_problem, sent_path

METRICS = web.AppKey("metrics", Metrics)
log = logging.getLogger(__name__)

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
ADMIN_USER = "admin"
REALM = "ClusterODM"
BODY_LIMIT_BYTES = 64 * 1024
DEFAULT_TASKS = 50
DEFAULT_ROUTES = 100
MAX_LIMIT = 1000
MAX_NUMBER = 10**MAX_DIGITS - 1
"""JSON numbers too: as large as the CLI's longest (a 5,000-digit int is refused, not used)."""

COMMANDS = web.AppKey("admin_commands", AdminCommands)
PASSWORD = web.AppKey("admin_password", str)
PAGE = web.AppKey("admin_page", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadInput(Exception):
    """The request's body or query is unusable: 400 ``{"error": ...}``."""


class Conflict(Exception):
    """The node number now names another node (the page was stale): 409."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _credentials_ok(header: str, password: str) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, given = decoded.partition(":")
    # evaluate both so a wrong user name costs the same time as a wrong password
    user_ok = password_matches(user, ADMIN_USER)
    pass_ok = password_matches(given, password)
    return bool(sep) and user_ok and pass_ok


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Basic auth on every path when a password is set (the page, static files and the API)."""
    password = request.app[PASSWORD]
    if password and not _credentials_ok(request.headers.get("Authorization", ""), password):
        if request.headers.get("Authorization"):
            log.warning("admin web: wrong credentials from %s", request.remote)
        resp = _error(401, "Unauthorized")
        resp.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
        return resp
    return await handler(request)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes JSON ``{"error": ...}``; never a traceback. A path with escapes,
    dot segments or past 512 characters is refused first, as by the proxy; a body that cannot
    be read (``Content-Encoding`` on plain bytes) is a 400 and ends the connection."""
    problem = path_problem(sent_path(request))
    if problem is not None:
        log.info("admin web: refused %s %.120r: %s", request.method, request.raw_path, problem)
        return _error(400, problem)
    response = await _answer(request, handler)
    if request.content.exception() is not None:  # a body that broke, read or not
        drop_body(request, response)
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.content.exception() is not None:  # the body broke in parsing
            raise RequestPayloadError(str(request.content.exception()))
        return await handler(request)
    except (RequestPayloadError, HttpProcessingError) as e:
        log.info("admin web: bad body on %s %s: %s", request.method, request.path, cause_line(e))
        return _error(400, "Malformed request body")
    except BadInput as e:
        return _error(400, str(e))
    except Conflict as e:
        return _error(409, str(e))
    except ClusterError as e:
        return _error(400, e.message)
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, e.reason)
        raise
    except Exception:
        log.exception("admin web: %s %s failed", request.method, request.path)
        return _error(500, "Internal error, see the cluster's log")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise BadInput("Send a JSON body with Content-Type: application/json")
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):  # not JSON, numbers past 4,300 digits, too deep
        raise BadInput("Body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadInput("Body must be a JSON object")
    return body


def _number(value: Any, what: str = "number") -> int:
    """A positive integer from JSON: an int, or digits in a string (as browsers' forms send)."""
    if isinstance(value, bool):
        raise BadInput(f"{what} must be a positive integer")
    if isinstance(value, str):
        try:  # the CLI's strict parse: ASCII digits, bounded length
            return parse_decimal(value.strip(), what, minimum=1)
        except BadNumber as e:
            raise BadInput(str(e)) from None
    if not isinstance(value, int) or not 1 <= value <= MAX_NUMBER:
        raise BadInput(f"{what} must be a positive integer")
    return value


def _limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    return min(_number(raw, "limit"), MAX_LIMIT)


def _check_name(cmds: AdminCommands, number: int, body: dict[str, Any]) -> bool:
    """False if there is no such node; Conflict if ``name`` says the page saw another node."""
    try:
        view = cmds.node(number)
    except NodeOutOfRange:
        return False
    name = body.get("name")
    if name is not None and name != view.name:
        raise Conflict(f"Node {number} is now {view.name}, not {name}; reload the list")
    return True


async def index(request: web.Request) -> web.Response:
    return web.Response(text=request.app[PAGE], content_type="text/html", charset="utf-8")


async def signout(request: web.Request) -> web.Response:
    """A 401 makes the browser forget the basic-auth credentials (as the original's)."""
    return web.Response(
        status=401,
        text='Signed out. <a href="/">Sign back in</a>',
        content_type="text/html",
    )


async def info(request: web.Request) -> web.Response:
    return web.json_response(request.app[COMMANDS].info())


async def node_list(request: web.Request) -> web.Response:
    return web.json_response(overview.node_items(request.app[COMMANDS]))


async def node_add(request: web.Request) -> web.Response:
    body = await _json_body(request)
    hostname = body.get("hostname")
    if not isinstance(hostname, str) or not hostname.strip():
        raise BadInput("hostname is required")
    port = _number(body.get("port"), "port")
    if port > 65535:
        raise BadInput("port must be at most 65535")
    token = body.get("token") or ""
    if not isinstance(token, str):
        raise BadInput("token must be a string")
    view = await request.app[COMMANDS].node_add(hostname.strip(), port, token)
    return web.json_response({"success": True, "number": view.number})


async def node_delete(request: web.Request) -> web.Response:
    body = await _json_body(request)
    number = _number(body.get("number"))
    cmds = request.app[COMMANDS]
    if not _check_name(cmds, number, body):
        return web.json_response(False)
    await cmds.node_del(number, force=body.get("force") is True)
    return web.json_response(True)


async def _set_locked(request: web.Request, locked: bool) -> web.Response:
    body = await _json_body(request)
    number = _number(body.get("number"))
    cmds = request.app[COMMANDS]
    if not _check_name(cmds, number, body):
        return web.json_response(False)
    await cmds.node_lock(number, locked)
    return web.json_response(True)


async def node_lock(request: web.Request) -> web.Response:
    return await _set_locked(request, True)


async def node_unlock(request: web.Request) -> web.Response:
    return await _set_locked(request, False)


async def tasks(request: web.Request) -> web.Response:
    limit = _limit(request, DEFAULT_TASKS)
    cmds = request.app[COMMANDS]
    return web.json_response(overview.add_task_details(cmds, await cmds.task_overview(limit)))


async def _task_action(request: web.Request, action: str) -> web.Response:
    body = await _json_body(request)
    uuid = body.get("uuid")
    if not isinstance(uuid, str) or not is_valid_uuid(uuid):
        raise BadInput("uuid must be a task uuid")
    logctx.task_uuid.set(uuid)
    answer = await request.app[COMMANDS].task_action(action, uuid)
    done = answer.get("success") is True
    log.info("admin web: task %s %s", action, "done" if done else "refused")
    return web.json_response({"success": True} if done else {"error": str(answer.get("error"))})


async def task_cancel(request: web.Request) -> web.Response:
    return await _task_action(request, "cancel")


async def task_remove(request: web.Request) -> web.Response:
    return await _task_action(request, "remove")


async def series(request: web.Request) -> web.Response:
    return web.json_response(overview.series(request.app[COMMANDS]))


async def routes(request: web.Request) -> web.Response:
    limit = _limit(request, DEFAULT_ROUTES)
    return web.json_response(request.app[COMMANDS].recent_routes(limit))


def render_page(password: str) -> str:
    """The page shell; data comes from ``/r/*`` through ``static/admin.js``."""
    template = (TEMPLATES / "index.html").read_text(encoding="utf-8")
    values = {
        "name": NAME,
        "version": __version__,
        "auth": "password" if password else "none",
    }
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", html.escape(value))
    return template


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text, behind the admin password like the rest of this port."""
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_admin_app(
    cmds: AdminCommands, password: str = "", metrics_source: Metrics | None = None
) -> web.Application:
    """The admin web application; ``app.py`` serves it on its own site in the same loop."""
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=BODY_LIMIT_BYTES
    )
    app[COMMANDS] = cmds
    app[PASSWORD] = password
    app[PAGE] = render_page(password)
    app.router.add_get("/", index)
    app.router.add_get("/signout", signout)
    app.router.add_get("/r/info", info)
    app.router.add_get("/r/node/list", node_list)
    app.router.add_post("/r/node/add", node_add)
    app.router.add_delete("/r/node", node_delete)
    app.router.add_post("/r/node/lock", node_lock)
    app.router.add_post("/r/node/unlock", node_unlock)
    app.router.add_get("/r/tasks", tasks)
    app.router.add_get("/r/routes", routes)
    app.router.add_post("/r/task/cancel", task_cancel)
    app.router.add_post("/r/task/remove", task_remove)
    app.router.add_get("/r/series", series)
    app.router.add_static("/static/", STATIC)
    if metrics_source is not None:
        app[METRICS] = metrics_source
        app.router.add_get("/metrics", metrics)
    if not password:
        log.warning("admin web has no password (--admin-pass): keep its port on a trusted network")
    return app
