"""ODM's split-merge through the cluster to real NodeODM nodes (#20).

Driven as ODM's remote executor drives a ClusterODM (``tests/odm_splitmerge.py``): both phases,
three submodels with images, geo.txt or gcp_list.txt and a seed.zip. The node side is checked
before each task is removed: images, GCP/geo files and the extracted seed byte for byte as sent,
and all.zip through the cluster byte for byte the node's own.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from tests.conftest import ClusterFactory
from tests.odm_splitmerge import PhaseReport, SplitMerge, Submodel, make_submodels
from tests.realnode import RealNode

PHASES = ("reconstruction", "toolchain")
REFRESH_S = 60.0  # the cluster's default: counts between two /info rounds are its own


class NodeSide:
    """What the test checks on the nodes while the driver runs (called from its threads)."""

    def __init__(self, nodes: list[RealNode], submodels: list[Submodel]) -> None:
        self.nodes = nodes
        self.submodels = {s.name: s for s in submodels}
        self.phase = ""
        self.problems: list[str] = []
        self.checked: dict[str, list[str]] = {}

    def free_nodes(self) -> list[int]:
        free = []
        for node in self.nodes:
            info = node.info()
            if int(str(info["taskQueueCount"])) < int(str(info["maxParallelTasks"])):
                free.append(node.port)
        return free

    def on_queued(self, name: str, uuid: str) -> None:
        free = self.free_nodes()
        if free:
            self.problems.append(f"{name} ({uuid}) answered QUEUED while nodes {free} were free")

    def before_remove(self, name: str, uuid: str, all_zip: bytes) -> None:
        holders = [n for n in self.nodes if n.task_dir(uuid).is_dir()]
        if len(holders) != 1:
            self.problems.append(f"{name} ({uuid}) is on {len(holders)} nodes")
            return
        node, sub = holders[0], self.submodels[name]
        task_dir = node.task_dir(uuid)
        sent = sub.images()
        if node.images(uuid) != [p.name for p in sent]:
            self.problems.append(f"{name}: node images {node.images(uuid)}")
        for p in sent:
            if (task_dir / "images" / p.name).read_bytes() != p.read_bytes():
                self.problems.append(f"{name}: image {p.name} differs")
        for p in sub.extras():
            if (task_dir / "gcp" / p.name).read_bytes() != p.read_bytes():
                self.problems.append(f"{name}: {p.name} differs")
        for rel, data in sub.seed_contents(self.phase).items():
            held = task_dir / rel
            if not held.is_file() or held.read_bytes() != data:
                self.problems.append(f"{name}: seed file {rel} differs")
        url = f"{node.url}/task/{uuid}/download/all.zip"
        with urllib.request.urlopen(url, timeout=30) as r:
            if r.read() != all_zip:
                self.problems.append(f"{name}: all.zip differs from the node's")
        self.checked.setdefault(self.phase, []).append(name)


async def both_phases(
    port: int, nodes: list[RealNode], submodels: list[Submodel], tmp_path: Path
) -> AsyncIterator[PhaseReport]:
    """Each phase driven as ODM drives it through the cluster on ``port``, its report given
    once the phase ended without error, with every submodel checked on its node and nothing
    wrong seen there (``NodeSide``)."""
    side = NodeSide(nodes, submodels)
    driver = SplitMerge(
        "127.0.0.1",
        port,
        poll_s=0.5,
        on_queued=side.on_queued,
        before_remove=side.before_remove,
        timeout_s=120,
    )
    for phase in PHASES:
        side.phase = phase
        report = await asyncio.to_thread(driver.run_phase, submodels, phase, tmp_path / "work")
        assert report.error is None, report.error
        assert side.problems == [], side.problems
        assert sorted(side.checked[phase]) == [s.name for s in submodels]
        yield report


async def test_both_phases_of_three_submodels_never_see_a_free_node_as_busy(
    real_node_factory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    nodes = [await real_node_factory(test_seconds=1, parallel=1) for _ in range(3)]
    cluster = await cluster_factory(nodes, refresh_interval_s=REFRESH_S)
    submodels = make_submodels(tmp_path / "project", count=3)
    async for report in both_phases(cluster.port, nodes, submodels, tmp_path):
        assert [r.after_commit for r in report.runs] == ["RUNNING"] * 3, report.runs
        assert report.limit_hits == 0 and report.max_remote_tasks is None, "never capped"
        assert all(r.all_zip > 0 for r in report.runs)
    assert cluster.registry.nodes() and all(
        cluster.registry.queue_count(n) == 0 for n in cluster.registry.nodes()
    ), "every task removed: every count is back to zero without a refresh"


async def test_with_fewer_nodes_than_submodels_only_a_full_cluster_answers_queued(
    real_node_factory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    nodes = [await real_node_factory(test_seconds=2, parallel=1) for _ in range(2)]
    cluster = await cluster_factory(nodes, refresh_interval_s=REFRESH_S)
    submodels = make_submodels(tmp_path / "project", count=3, images=2)
    async for report in both_phases(cluster.port, nodes, submodels, tmp_path):
        # the third submodel found both nodes busy: QUEUED is then the truth, and ODM caps
        assert all(r.statuses.count("QUEUED") == 0 for r in report.runs if not r.limit_hit)
