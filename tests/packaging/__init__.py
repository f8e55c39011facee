"""Tests of what we ship: the container image, the single-file executable, compose and apptainer.

Helpers here run programs as users do: as separate processes on loopback, driven by pyodm.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyodm import Node
from pyodm.types import TaskStatus

from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
TASK_TIMEOUT_S = 60.0


def require(condition: bool, reason: str) -> None:
    """Skip when a tool is missing on a developer machine; under CI (``CI`` set) fail instead."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    require(not missing, f"needs {', '.join(missing)} on PATH")


@dataclass
class Started:
    """A program started by a test; its output lines are collected by a reader thread."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match[str]:
        """Wait (bounded) for an output line matching ``pattern``; fail with the output so far."""
        regex = re.compile(pattern)
        try:
            while True:
                line = self._queue.get(timeout=timeout_s)
                if line is None:
                    break
                if m := regex.search(line):
                    return m
        except queue.Empty:
            pass
        raise AssertionError(
            f"{pattern!r} not printed within {timeout_s}s by {self.proc.args!r} "
            f"(exit code {self.proc.poll()}):\n{self.output}"
        )

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        return self.proc.returncode


def start(cmd: Sequence[str | Path], env: dict[str, str] | None = None, **kw: object) -> Started:
    """Start ``cmd`` with stdout and stderr merged into one collected stream."""
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        **kw,  # type: ignore[call-overload]
    )
    started = Started(proc)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            started.lines.append(line)
            started._queue.put(line)
        started._queue.put(None)

    threading.Thread(target=read, daemon=True).start()
    return started


def start_simnode(test_seconds: float = 0.5) -> tuple[Started, int]:
    """A simulated node in its own process on a free loopback port; returns it and its port."""
    cmd = [sys.executable, "-m", "clusterodm.simnode", "--port", "0"]
    node = start([*cmd, "--test-seconds", str(test_seconds)])
    m = node.wait_for(r"SimNode listening on http://127\.0\.0\.1:(\d+)")
    return node, int(m.group(1))


def write_nodes_json(data_dir: Path, port: int) -> None:
    """Pre-fill nodes as users do before the first start (the original's format)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    nodes = [{"hostname": "127.0.0.1", "port": str(port), "token": ""}]
    (data_dir / "nodes.json").write_text(json.dumps(nodes))


def free_port() -> int:
    """A port free right now, for programs whose port must be known before they start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(cluster: Started) -> int:
    """The proxy port a cluster started with ``--port 0`` bound, read from its log."""
    return int(cluster.wait_for(r"listening on port (\d+)").group(1))


def run_task_through(port: int, work: Path) -> Path:
    """Drive one task with pyodm through the cluster at ``port``: create, wait, download."""
    images = work / "images"
    images.mkdir(parents=True)
    paths = []
    for i in range(3):
        p = images / f"IMG_{i:04d}.JPG"
        p.write_bytes(bytes([i]) * 4096)
        paths.append(str(p))
    node = Node("127.0.0.1", port, timeout=10)
    assert node.info().version, "the cluster answers /info"
    task = node.create_task(paths, {"orthophoto-resolution": 5}, "packaging check")
    done = {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELED}
    info = wait_until(
        lambda: (i := task.info()).status in done and i,
        timeout_s=TASK_TIMEOUT_S,
        interval_s=0.2,
        message="task finished",
    )
    assert info.status == TaskStatus.COMPLETED, info.last_error
    assert info.images_count == 3
    dest = work / "results"
    task.download_assets(str(dest))
    assert any(dest.rglob("*.tif")), f"no orthophoto in {sorted(dest.rglob('*'))}"
    return dest
