"""Counts every proxied request for ``/metrics`` (route template, status, bytes in and out) and
names the task it is about in the request's log lines. Called by the one proxy middleware
(``middleware.py``)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter

from clusterodm import log as logctx
from clusterodm.metrics import Metrics


def name_task(request: web.Request) -> None:
    """This request's log lines name its task (the request runs in its own context)."""
    uuid = request.match_info.get("uuid")
    if uuid:
        logctx.task_uuid.set(uuid[:64])


class RequestCounter:
    """``clusterodm_requests`` by route template and status, and the bytes counters.

    The labelled children are kept here: looking one up through ``labels()`` costs more than
    the increment itself. Both labels are bounded (route templates, HTTP statuses).
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._children: dict[tuple[str, int], Counter] = {}

    def child(self, route: str, status: int) -> Counter:
        """The requests counter of ``route`` and ``status``, made at first use."""
        child = self._children.get((route, status))
        if child is None:
            child = self.metrics.requests.labels(route, str(status))
            self._children[(route, status)] = child
        return child

    def count(self, request: web.Request, status: int, response: web.StreamResponse | None) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        self.child(route, status).inc()
        if request.method == "POST" and request.content_length:
            self.metrics.bytes_received.inc(request.content_length)
        if response is not None and response.content_length:
            self.metrics.bytes_sent.inc(response.content_length)
