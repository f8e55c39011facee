"""Counts every proxied request for ``/metrics`` (route template, status, bytes in and out) and
names the task it is about in the request's log lines."""

from __future__ import annotations

from aiohttp import web

from clusterodm import log as logctx
from clusterodm.metrics import Metrics
from clusterodm.proxy.middleware import Handler

METRICS = web.AppKey("metrics", Metrics)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    uuid = request.match_info.get("uuid")
    if uuid:
        logctx.task_uuid.set(uuid[:64])  # this request's own context: log lines name the task
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        metrics.requests.labels(route, str(status)).inc()
        if request.method == "POST" and request.content_length:
            metrics.bytes_received.inc(request.content_length)
        if response is not None and response.content_length:
            metrics.bytes_sent.inc(response.content_length)
