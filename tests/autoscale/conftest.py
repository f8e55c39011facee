"""Autoscaler fixtures: an ``--asr`` file written for the test, a cluster started with it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from clusterodm.app import Cluster
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
def asr_cluster(
    tmp_path: Path, simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> AsrClusterFactory:
    """A cluster with a locked reference node (so every task needs a new machine) and --asr."""

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
        return cluster

    return make
