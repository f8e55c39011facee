"""The Grafana dashboard (packaging/grafana) queries only metrics and labels that a real
``/metrics`` scrape of a working cluster has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from clusterodm.admin import AdminCommands, build_admin_app
from tests.admin import make_task
from tests.conftest import ClusterFactory, SimnodeFactory

DASHBOARD = Path(__file__).resolve().parents[2] / "packaging/grafana/clusterodm-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
PROMQL_WORDS = {"sum", "rate", "increase", "histogram_quantile", "by", "le", "label_values"}


def dashboard_queries() -> list[str]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


def scraped(text: str) -> tuple[set[str], set[str]]:
    """Series names a query may use (with the suffixes each type exposes), and label names."""
    names: set[str] = set()
    labels: set[str] = {"job", "instance", "le"}
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


async def test_dashboard_queries_exist_in_a_scrape(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    # the first node drops uploads: one dispatch failure (a labelled series), then the second
    bad = await simnode_factory(drop_uploads_after=0)
    cluster = await cluster_factory([bad, await simnode_factory()])
    await make_task(cluster)
    web_app = build_admin_app(AdminCommands(cluster.deps), "", cluster.metrics)
    admin = (await cluster.add_site("admin-web", web_app, 0)).port
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        assert r.status == 200
        names, labels = scraped(await r.text())
    queries = dashboard_queries()
    assert len(queries) >= 10
    used = {m for q in queries for m in re.findall(r"\bclusterodm_[a-z_]+", q)}
    assert used and used <= names, f"not in /metrics: {sorted(used - names)}"
    assert {"clusterodm_queue_length", "clusterodm_bytes_sent_total"} <= used
    for q in queries:
        for group in re.findall(r"by \(([^)]*)\)", q):
            for label in (x.strip() for x in group.split(",")):
                assert label in labels, f"label {label!r} of {q!r} not in /metrics"
        for label in re.findall(r"[{,]\s*(\w+)=~?\"", q):
            assert label in labels, f"label {label!r} of {q!r} not in /metrics"
