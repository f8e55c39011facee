"""ODM's split-merge through a cluster: the time of each phase, ours and the original's (#20).

    python -m bench --only splitmerge [--against-original] [--runs N]

Real NodeODM nodes (``NODEODM_SH``, test mode, ``-q 1``) behind our cluster, and with
``--against-original`` behind the Node.js original (``CLUSTERODM_ORIGINAL_SH``; both found in
``../shared/peers`` when not set) as well, one cluster at a time. Each is driven by
``tests/odm_splitmerge.py`` as ODM's remote executor drives ``--sm-cluster``: three
submodels, both phases, every submodel sent to the cluster (no local worker), status polled
every 3 s as pyodm's ``wait_for_completion`` does. A QUEUED answer right after a commit costs
ODM a removal, a new upload and a cap of one remote task, so it shows in the phase time; the
limit hits are printed beside it. The machine is shared: its load (``uptime``) is printed
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.run import Proc, _python
from bench.sidebyside import peer_script
from tests.odm_splitmerge import PhaseReport, SplitMerge, make_submodels
from tests.realnode import RealNode, RealNodeConfig, start_real_node_sync
from tests.redis_server import free_port

NODES = 3
SUBMODELS = 3
PHASES = ("reconstruction", "toolchain")
START_TIMEOUT_S = 120.0  # the original builds nothing at start, but Node 14 is slow to load


def load() -> str:
    """The machine's load averages, as ``uptime`` prints them."""
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.strip().split("load average:")[-1].strip()


def _wait_ready(url: str, proc: Proc) -> None:
    """Until the cluster answers /options (it needs a node online to)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.tail()}")
        try:
            with urllib.request.urlopen(f"{url}/options", timeout=5) as r:
                if isinstance(json.loads(r.read()), list):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready: {proc.tail()}")


def _nodes_json(work: Path, nodes: list[RealNode]) -> None:
    (work / "data").mkdir(parents=True, exist_ok=True)
    listed = [{"hostname": n.host, "port": str(n.port), "token": ""} for n in nodes]
    (work / "data" / "nodes.json").write_text(json.dumps(listed))


def start_ours(work: Path, nodes: list[RealNode]) -> tuple[Proc, int]:
    _nodes_json(work, nodes)
    port = free_port()
    argv = _python(
        "-m", "clusterodm", "--port", str(port), "--bind", "127.0.0.1",
        "--admin-cli-port", "0", "--admin-web-port", "0", "--data-dir", str(work / "data"),
    )  # fmt: skip
    proc = Proc(argv, "ours")
    _wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc, port


def start_original(work: Path, nodes: list[RealNode], script: str) -> tuple[Proc, int]:
    _nodes_json(work, nodes)
    port, cli, web = free_port(), free_port(), free_port()
    os.environ["ORIGINAL_WORK"] = str(work)
    try:
        proc = Proc([script, str(port), str(cli), str(web)], "original")
    finally:
        del os.environ["ORIGINAL_WORK"]
    _wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc, port


def drive(port: int, work: Path) -> list[PhaseReport]:
    submodels = make_submodels(work / "project", count=SUBMODELS)
    driver = SplitMerge("127.0.0.1", port, poll_s=3.0, timeout_s=300.0)
    reports = []
    for phase in PHASES:
        report = driver.run_phase(submodels, phase, work / "odm")
        if report.error is not None:
            raise RuntimeError(f"{phase}: {report.error}")
        reports.append(report)
    return reports


def run(args: argparse.Namespace) -> int:
    nodeodm = peer_script("nodeodm.sh", "NODEODM_SH")
    if nodeodm is None:
        print("nodeodm.sh not found (NODEODM_SH): real NodeODM nodes are needed", file=sys.stderr)
        return 2
    os.environ["NODEODM_SH"] = str(nodeodm)  # for tests/realnode.py
    found = peer_script("clusterodm-original.sh", "CLUSTERODM_ORIGINAL_SH")
    if args.against_original and found is None:
        print("the original is not here: set CLUSTERODM_ORIGINAL_SH", file=sys.stderr)
        return 2
    original = str(found)
    runs = max(1, args.runs or 1)
    kinds = ["ours", "original"] if args.against_original else ["ours"]
    times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in PHASES} for k in kinds}
    hits: dict[str, list[int]] = {k: [] for k in kinds}
    before = load()
    nodes = [
        start_real_node_sync(RealNodeConfig(parallel=1, test_seconds=1.0)) for _ in range(NODES)
    ]
    try:
        for i in range(runs):
            for kind in kinds:
                with tempfile.TemporaryDirectory(prefix=f"bench-sm-{kind}-") as tmp:
                    work = Path(tmp)
                    print(f"-- split-merge, {kind}, run {i + 1} ...", file=sys.stderr, flush=True)
                    if kind == "ours":
                        proc, port = start_ours(work, nodes)
                    else:
                        proc, port = start_original(work, nodes, original)
                    try:
                        reports = drive(port, work)
                    finally:
                        proc.stop()
                for report in reports:
                    times[kind][report.phase].append(report.seconds)
                hits[kind].append(sum(r.limit_hits for r in reports))
    finally:
        for node in nodes:
            node.stop_sync()
    after = load()
    result: dict[str, Any] = {"runs": runs, "load_before": before, "load_after": after}
    print(
        f"ODM split-merge, {SUBMODELS} submodels, {NODES} real NodeODM nodes (-q 1, "
        f"test_seconds 1), status every 3 s; median of {runs} run(s)"
    )
    header = f"{'phase':<16}" + "".join(f"{k + ' (s)':>16}" for k in kinds)
    print(header)
    for phase in PHASES:
        row = f"{phase:<16}"
        for kind in kinds:
            median = statistics.median(times[kind][phase])
            result[f"{kind}_{phase}_s"] = median
            row += f"{median:>16.1f}"
        print(row)
    row = f"{'QUEUED answers':<16}" + "".join(f"{sum(hits[k]):>16d}" for k in kinds)
    print(row)
    print(f"load average: before {before}; after {after} (machine shared)")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
