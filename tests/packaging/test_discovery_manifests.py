"""Static checks of the discovery set-ups that cannot run here (no Kubernetes, no Docker): the
manifests in packaging/kubernetes/ and packaging/docker-compose.scale.yml. Every flag they pass to
``clusterodm`` must exist in its ``--help`` and parse; the names they discover must be the
services they define; the scalers must target the node Deployment and read metrics a running
cluster exports."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from yarl import URL

from clusterodm.cli import parse_settings
from tests.conftest import ClusterFactory
from tests.packaging import REPO

KUBE = REPO / "packaging" / "kubernetes"
COMPOSE = REPO / "packaging" / "docker-compose.scale.yml"
METRIC_RE = re.compile(r"\bclusterodm_[a-z_]+\b")


def load_all(path: Any) -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifests")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in docs), path
    return docs


def kube_docs() -> list[dict[str, Any]]:
    return [d for f in sorted(KUBE.glob("*.yaml")) for d in load_all(f)]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in kube_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"one {kind} {name}"
    return found[0]


def cluster_args() -> list[list[str]]:
    """The argument lists every set-up passes to clusterodm, ``$(VAR)`` filled in."""
    out = []
    for doc in kube_docs():
        if doc["kind"] != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "clusterodm":
                out.append([re.sub(r"\$\(\w+\)", "x", a) for a in c.get("args", [])])
    compose = load_all(COMPOSE)[0]
    out.append([str(a) for a in compose["services"]["clusterodm"]["command"]])
    assert len(out) == 2
    return out


def nodes_from(args: list[str]) -> list[URL]:
    settings = parse_settings(args)
    return [URL(u) for u in settings.nodes_from]


def test_every_flag_exists_in_help_and_parses() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "clusterodm", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    ).stdout
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    for args in cluster_args():
        flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        assert flags, args
        assert flags <= known, f"unknown flags: {flags - known}"
        settings = parse_settings(args)
        assert settings.discovery_sources(), "every set-up discovers its nodes"


def test_kubernetes_nodes_behind_a_headless_service() -> None:
    deployment, service = find("Deployment", "nodeodm"), find("Service", "nodeodm")
    assert service["spec"]["clusterIP"] == "None", "headless: one A record per pod"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {p["port"] for p in service["spec"]["ports"]}
    for p in service["spec"]["ports"]:
        assert container_ports[p["targetPort"]] == p["port"]
    kube_args = cluster_args()[0]
    urls = nodes_from(kube_args)
    assert [(u.host, u.port) for u in urls] == [("nodeodm", next(iter(ports)))]
    store = next(a for a in kube_args if a.startswith("--store="))
    redis = find("Service", "redis")
    assert URL(store.split("=", 1)[1]).host == redis["metadata"]["name"]
    assert find("Deployment", "clusterodm")["spec"]["replicas"] > 1, "several replicas"
    claim = find("PersistentVolumeClaim", "clusterodm-data")
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "one upload folder for all"


def test_kustomization_lists_existing_files() -> None:
    (kustomization,) = load_all(KUBE / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (KUBE / resource).is_file(), resource


def test_compose_scales_the_discovered_service() -> None:
    compose = load_all(COMPOSE)[0]
    services = compose["services"]
    (url,) = nodes_from([str(a) for a in services["clusterodm"]["command"]])
    nodes = services[url.host]
    assert "container_name" not in nodes, "a fixed container name cannot be scaled"
    assert str(url.port) in [str(p) for p in nodes["expose"]]
    assert "ports" not in nodes, "published ports would clash between replicas"
    assert (REPO / "Dockerfile").is_file() and services["clusterodm"]["build"] == ".."
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert named <= set(compose.get("volumes") or {})


async def test_scalers_target_the_nodes_and_read_exported_metrics(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory()
    exported = set(METRIC_RE.findall(cluster.metrics.render()[0].decode()))
    keda = find("ScaledObject", "nodeodm")
    hpa = find("HorizontalPodAutoscaler", "nodeodm")
    assert keda["spec"]["scaleTargetRef"]["name"] == "nodeodm"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "nodeodm",
    }
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    used = set(METRIC_RE.findall(trigger["metadata"]["query"]))
    assert "clusterodm_queue_length" in used
    assert used <= exported, f"not exported: {used - exported}"
    # the adapter rule in hpa.yaml's comment reads the same metrics
    hpa_text = (KUBE / "hpa.yaml").read_text()
    rule_metrics = set(METRIC_RE.findall(hpa_text)) - {"clusterodm_nodes_wanted"}
    assert rule_metrics and rule_metrics <= exported


def pre_stop_script() -> str:
    container = find("Deployment", "nodeodm")["spec"]["template"]["spec"]["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["node", "-e"]
    return str(command[2])


async def test_pre_stop_hook_waits_for_the_real_nodes_tasks(real_node_factory: Any) -> None:
    """The hook holds SIGTERM back while the real NodeODM has a task, and lets go after."""
    node_bin = shutil.which("node") or shutil.which("nodejs")
    real = await real_node_factory(test_seconds=3)
    assert node_bin, "the real NodeODM runs on node"
    env = {
        **os.environ,
        "NODEODM_PORT": str(real.port),
        "DRAIN_LINGER_MS": "0",
        "DRAIN_CHECK_MS": "200",
    }

    async def hook() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            node_bin, "-e", pre_stop_script(), env=env, stdin=asyncio.subprocess.DEVNULL
        )

    idle = await hook()
    assert await asyncio.wait_for(idle.wait(), 10) == 0, "an idle node stops at once"

    form = aiohttp.FormData()
    for i in range(2):
        form.add_field("images", b"x" * 512, filename=f"{i}.jpg")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{real.url}/task/new", data=form) as r:
            uuid = (await r.json())["uuid"]
        busy = await hook()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(busy.wait()), 1.0)
            assert await asyncio.wait_for(busy.wait(), 30) == 0
            async with s.get(f"{real.url}/task/{uuid}/info") as r:
                status = (await r.json())["status"]["code"]
            assert status == 40, "the hook let go once the task had completed"
        finally:
            if busy.returncode is None:
                busy.kill()
                await busy.wait()
