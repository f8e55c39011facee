"""Prometheus metrics (``clusterodm_`` prefix), one registry per cluster.

Counters and histograms are updated where things happen; gauges that describe the current
state (nodes online, slots, queue length, machines) are read at scrape time from callables, so
nothing has to keep them in sync. Labels are bounded: a route template or a node, never a uuid.
Served on the admin web port, behind the admin password (``/metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

_SECONDS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, Callable[[], float]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (doc, read) in self.sources.items():
            try:
                value = float(read())
            except Exception:
                continue
            yield GaugeMetricFamily(name, doc, value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "clusterodm_requests",
            "Proxied NodeODM API requests, by route template and HTTP status",
            ["route", "status"],
            registry=r,
        )
        self.bytes_received = Counter(
            "clusterodm_bytes_received", "Bytes of images uploaded by clients", registry=r
        )
        self.bytes_sent = Counter(
            "clusterodm_bytes_sent", "Bytes sent to clients from nodes", registry=r
        )
        self.dispatches = Counter("clusterodm_dispatches", "Tasks forwarded to a node", registry=r)
        self.dispatch_failures = Counter(
            "clusterodm_dispatch_failures",
            "Failed attempts to forward a task, by reason",
            ["reason"],
            registry=r,
        )
        self.dispatch_seconds = Histogram(
            "clusterodm_dispatch_seconds",
            "Time to forward a task to its node (init, uploads, commit)",
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "clusterodm_queue_wait_seconds",
            "Time tasks waited at the proxy for a free node",
            buckets=_SECONDS,
            registry=r,
        )
        self.failovers = Counter(
            "clusterodm_failovers", "Tasks moved off a node that died or lost them", registry=r
        )
        self._state = _StateCollector()
        r.register(self._state)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time."""
        self._state.sources[name] = (doc, read)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
