"""The benchmark suite keeps working: ``python -m bench --quick`` runs and reports every figure.

Benchmarks are not tests: nothing here checks a speed or a goal, only that the suite runs to the
end and writes valid JSON holding every figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FIGURES = (
    "generator_ceiling_rps",
    "info_rps_direct",
    "info_rps_cluster",
    "info_rps_ratio",
    "info_errors",
    "latency_p50_added_ms",
    "latency_p99_added_ms",
    "zip_mb_s_direct",
    "zip_mb_s_cluster",
    "zip_ratio",
    "zip_rss_growth_mb",
    "upload_s_direct",
    "upload_s_cluster",
    "upload_ratio",
    "rss_idle_mb",
    "load_rss_peak_mb",
    "load_errors",
    "lookup_p99_small_ms",
    "lookup_p99_routes_ms",
    "lookup_p99_ratio",
    "startup_s_routes",
)


@pytest.mark.timeout(900)
def test_quick_suite_runs_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    figures = result["figures"]
    missing = [k for k in FIGURES if not isinstance(figures.get(k), int | float)]
    assert not missing, missing
    assert len(result["goals"]) == 7
    assert all(g["ok"] is not None for g in result["goals"])
    assert "measured" in done.stdout
