"""``/info``, ``/options``, ``/auth/*``, ``/commit``, ``/cache/clear`` and the node's web UI."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from clusterodm import API_VERSION
from clusterodm.access.base import Limits, User
from clusterodm.errors import ClusterError, NoNodeAvailable
from clusterodm.nodes import paths
from clusterodm.proxy.answers import json_bytes_response
from clusterodm.proxy.deps import ProxyDeps, deps, user_of
from clusterodm.proxy.forward import forward
from clusterodm.proxy.middleware import sent_path
from clusterodm.tasks.limits import limited_options

log = logging.getLogger(__name__)

HUGE = 99999999999  # what the original reports for the cluster's memory, cores and slots


async def info(request: web.Request) -> web.Response:
    """Built once per user's limits and reference engine, then served as bytes."""
    return json_bytes_response(info_body(deps(request), user_of(request).limits))


def info_body(d: ProxyDeps, limits: Limits) -> bytes:
    """``/info`` for ``limits`` (also answered by ``front.py``, the same bytes)."""
    ref = d.registry.reference()
    engine = ref.info.engine if ref and ref.info else "odm"
    engine_version = ref.info.engine_version if ref and ref.info else "?"
    return d.info_bodies.body(
        limits, (engine, engine_version), lambda: _info(limits, engine, engine_version)
    )


def _info(limits: Limits, engine: str, engine_version: str) -> dict[str, Any]:
    return {
        "version": API_VERSION,
        "taskQueueCount": 0,
        "totalMemory": HUGE,
        "availableMemory": HUGE,
        "cpuCores": HUGE,
        "maxImages": limits.max_images,
        "maxParallelTasks": limits.max_concurrent_tasks
        if limits.max_concurrent_tasks is not None
        else HUGE,
        "engineVersion": engine_version,
        "engine": engine,
    }


async def options(request: web.Request) -> web.Response:
    """The reference node's list (cached 1 h) as this user may use it.

    Original: the limited list cached per token for 1 h; here the node's list is cached, and
    the user's view of it kept as bytes per limits until the list is fetched again or the users
    file reloaded (new limits), so a users-file change shows at once.
    """
    d = deps(request)
    known = await d.options.get()
    limits = user_of(request).limits
    body = d.options_bodies.body(limits, known, lambda: limited_options(known, limits))
    return json_bytes_response(body)


async def cache_clear(request: web.Request) -> web.Response:
    d = deps(request)
    d.options.clear()
    clear = getattr(d.access, "clear_cache", None)  # providers that cache token answers
    if callable(clear):
        clear(user_of(request).token)
    return web.json_response({"success": True})


async def auth_info(request: web.Request) -> web.Response:
    return web.json_response(deps(request).access.auth_info())


async def auth_not_available(request: web.Request) -> web.Response:
    return web.json_response({"error": "Not available"})


async def commit_webhook(request: web.Request) -> web.Response:
    """Called by a node when a task ends (auto-spawned nodes are started with this webhook)."""
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, RecursionError):  # not JSON, numbers past 4,300 digits, too deep
        return web.json_response({"error": "Invalid JSON body"})
    uuid = body.get("uuid") if isinstance(body, dict) else None
    if not isinstance(uuid, str):
        return web.json_response({"error": "uuid missing"})
    log.info("task %s finished on its node (webhook)", uuid)
    d = deps(request)
    route = d.routes.get(uuid)
    if route is not None:
        user = User(token=request.query.get("token", ""), owner=route.owner)
        try:
            await d.access.task_finished(user, uuid)
        except ClusterError as e:
            log.error("task %s: cannot report it finished: %s", uuid, e.message)
    autoscaler = d.dispatcher.provisioner
    if autoscaler is not None and hasattr(autoscaler, "on_commit"):
        await autoscaler.on_commit(uuid)  # tears its auto-spawned node down a little later
    return web.json_response({"ok": True})


async def web_ui(request: web.Request) -> web.StreamResponse:
    """The reference node's own web UI: only its static files (``paths.is_ui_file``), GET or
    HEAD, as sent (the middleware refused escapes and dot segments), without the client's
    query, which the files do not use; any other path is answered here as NodeODM's 404."""
    path = sent_path(request)
    if request.method not in ("GET", "HEAD") or not paths.is_ui_file(path):
        return web.json_response({"error": f"Cannot {request.method} {path}"}, status=404)
    d = deps(request)
    ref = d.registry.reference()
    if ref is None:
        raise NoNodeAvailable("No nodes are online.")
    return await forward(request, d.client, ref, paths.ui_file(path), query={})
