"""Counts every proxied request for ``/metrics``: route template, status, bytes in and out."""

from __future__ import annotations

from aiohttp import web

from clusterodm.metrics import Metrics
from clusterodm.proxy.middleware import Handler

METRICS = web.AppKey("metrics", Metrics)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
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
