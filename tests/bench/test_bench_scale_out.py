"""The scale-out benchmark runs to the end and reports every figure (not a speed check)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_bench_scale_out_reports_every_figure(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    out = tmp_path / "scale-out.json"
    args = ["--seconds", "0.5", "--requests", "200", "--concurrency", "6", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "bench.bench_scale_out", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(out.read_text())
    for n in (1, 2, 3):
        assert figures[f"info_rps_{n}_instances"] > 0
        assert figures[f"info_errors_{n}_instances"] == 0
    assert figures["redis_commands_per_routed_info"] < 1, "routes are read from memory"
    assert figures["redis_commands_per_held_info"] >= 1, "held tasks are read from the store"
