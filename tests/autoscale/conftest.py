"""Autoscaler fixtures: an ``--asr`` file written for the test, a cluster started with it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from clusterodm.app import Cluster
from clusterodm.autoscale.localproc import LocalProvider
from clusterodm.errors import CloudError
from tests.conftest import ClusterFactory, SimnodeFactory

SIMNODE = "{python} -m clusterodm.simnode --port {port} --token {token} --webhook {webhook}"

AsrClusterFactory = Callable[..., Awaitable[Cluster]]


def fast(**config: Any) -> dict[str, Any]:
    """Timing knobs that make a whole lifecycle take seconds."""
    return {
        "onlineTimeout": 15,
        "pollInterval": 0.1,
        "teardownDelay": 0.1,
        "vacuumInterval": 3600,
        "createRetryDelay": 0.01,
        **config,
    }


@pytest.fixture
async def asr_cluster(
    tmp_path: Path, simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> AsyncIterator[AsrClusterFactory]:
    """A cluster with a locked reference node (so every task needs a new machine) and --asr.

    Local machines are processes that outlive their cluster on purpose (as cloud machines
    do); the ones a test's clusters left running are destroyed after it."""
    clusters: list[Cluster] = []

    count = [0]

    def write(config: dict[str, Any]) -> Path:
        count[0] += 1
        path = tmp_path / f"asr{count[0]}.json"
        path.write_text(json.dumps(config))
        return path

    async def make(config: dict[str, Any], **overrides: Any) -> Cluster:
        path = write(config)
        ref = await simnode_factory()
        cluster = await cluster_factory([ref], asr=str(path), **overrides)
        await cluster.registry.set_locked(cluster.registry.nodes()[0].key, True)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        asr = cluster.extra.get("autoscaler")
        provider = getattr(asr, "provider", None)
        if isinstance(provider, LocalProvider) and asr.cluster_tag:
            for machine in await provider.list_tagged(asr.cluster_tag):
                with contextlib.suppress(CloudError):
                    await provider.destroy(machine)
