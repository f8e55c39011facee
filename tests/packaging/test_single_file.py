"""The single-file executable: built with the one documented command, run without any Python.

``packaging/build-single-file.sh`` builds it (a fresh venv, PyInstaller, ``clusterodm.spec``);
it then runs from an empty environment whose PATH holds no Python, against a simulated node,
and a task goes through it with pyodm.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging import (
    REPO,
    require_tools,
    run_task_through,
    start,
    start_simnode,
    wait_listening,
    write_nodes_json,
)

pytestmark = pytest.mark.timeout(600)

BUILD_TIMEOUT_S = 480


@pytest.fixture
def executable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built once for the one test here (a shared fixture would be built once per xdist worker)."""
    require_tools("python3")
    tmp = tmp_path_factory.mktemp("single-file")
    dist = tmp / "dist"
    t0 = time.monotonic()
    built = subprocess.run(
        [str(REPO / "packaging/build-single-file.sh"), str(dist)],
        env={**os.environ, "WORK_DIR": str(tmp / "work")},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    print(f"single-file build {time.monotonic() - t0:.0f} s")
    exe = dist / "clusterodm"
    assert exe.is_file() and os.access(exe, os.X_OK)
    yield exe


def no_python_env(home: Path) -> dict[str, str]:
    """Nothing from this test's Python: no PATH to an interpreter, no PYTHON* variables."""
    return {"PATH": "/nonexistent", "HOME": str(home), "LANG": "C.UTF-8"}


def check_needs_no_python(executable: Path, tmp_path: Path) -> None:
    # the interpreter is inside the file: it links no libpython from the system
    ldd = subprocess.run(["ldd", str(executable)], capture_output=True, text=True, timeout=30)
    assert "libpython" not in ldd.stdout
    version = subprocess.run(
        [str(executable), "--version"],
        env=no_python_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("ClusterODM ")


def test_executable_needs_no_python_and_runs_a_task(executable: Path, tmp_path: Path) -> None:
    check_needs_no_python(executable, tmp_path)
    node, node_port = start_simnode()
    cluster = None
    try:
        data = tmp_path / "data"
        write_nodes_json(data, node_port)
        flags = ["--port", "0", "--bind", "127.0.0.1", "--admin-cli-port", "0"]
        flags += ["--admin-web-port", "0"]
        # no --data-dir: ./data beside where it is started, as with the original's bundle
        cluster = start([executable, *flags], env=no_python_env(tmp_path), cwd=tmp_path)
        port = wait_listening(cluster)
        assert "imported 1 nodes" in cluster.output

        run_task_through(port, tmp_path / "client")

        assert cluster.stop() == 0, cluster.output
        assert (data / "clusterodm.db").is_file()
    finally:
        if cluster is not None:
            cluster.stop()
        node.stop()
