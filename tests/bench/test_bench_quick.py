"""The benchmark suite keeps working: ``python -m bench --quick`` runs and reports every figure.

Benchmarks are not tests: nothing here checks a speed or a goal, only that the suite runs to the
end and writes valid JSON holding every figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.sidebyside import peer_script
from clusterodm.proxy import forward
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.realnode import nodeodm_sh_or_skip

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
    _check_side(figures["side_sim"], original=False)
    assert "Side by side, simnode" in done.stdout


SIDE_FIGURES = ("info_rps", "task_info_rps", "zip_mb_s", "upload_s", "rss_peak_upload_mb")


def _check_side(side: dict[str, Any], original: bool) -> None:
    """Every side-by-side figure has a number for the node and each cluster, and CPU beside."""
    who = ["node", "ours", *(["original"] if original else [])]
    for key in SIDE_FIGURES:
        for name in who if key != "rss_peak_upload_mb" else who[1:]:
            value = side[key][name]["median"]
            assert isinstance(value, float) and value > 0, (key, name, value)
        if key != "rss_peak_upload_mb":
            assert set(side[key]["cpu"]) == set(who), key
    for key in ("info_rps", "task_info_rps"):  # the real node's own /info may time out
        assert side[key]["errors"]["ours"] == side[key]["errors"].get("original", 0) == 0
    assert all(side["rss_idle_mb"][name] > 0 for name in who[1:])


@pytest.mark.timeout(600)
def test_side_by_side_with_the_real_node_and_the_original(tmp_path: Path) -> None:
    """``--real --against-original``: the real NodeODM 2.2.4 and the original ClusterODM 1.5.8
    in the same run as ours."""
    nodeodm_sh_or_skip()
    if peer_script("clusterodm-original.sh", "CLUSTERODM_ORIGINAL_SH") is None:
        reason = "CLUSTERODM_ORIGINAL_SH is not set and ../shared/peers has no original"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path / "side.json"
    side = ["--only", "side by side", "--real", "--against-original"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *side, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=570,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text(encoding="utf-8"))["figures"]
    _check_side(figures["side_sim"], original=True)
    _check_side(figures["side_real"], original=True)
    assert figures["side_real"]["node"] == "real NodeODM"
    assert "ours/original" in done.stdout


async def test_large_download_through_the_cluster_is_the_nodes_bytes(
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large answers are relayed around Python (splice on Linux): same bytes, ranges, and the
    connection stays usable for the next request."""
    spliced: list[int] = []
    relay = forward._splice_loop

    def counting(src: int, dst: int, remaining: int, idle_s: float, stop: Any = None) -> None:
        spliced.append(remaining)
        relay(src, dst, remaining, idle_s, stop)

    monkeypatch.setattr(forward, "_splice_loop", counting)
    sim = await simnode_factory(zip_size=20_000_000)
    cluster = await cluster_factory([sim])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{cluster.url}/task/new/init") as r:
            uuid = (await r.json())["uuid"]
        form = aiohttp.FormData()
        form.add_field("images", b"\xff\xd8" + bytes(1024), filename="IMG_0001.JPG")
        async with s.post(f"{cluster.url}/task/new/upload/{uuid}", data=form) as r:
            assert await r.json() == {"success": True}
        async with s.post(f"{cluster.url}/task/new/commit/{uuid}") as r:
            assert (await r.json())["uuid"] == uuid
        for _ in range(200):
            async with s.get(f"{cluster.url}/task/{uuid}/info") as r:
                if (await r.json()).get("status", {}).get("code") == 40:
                    break
            await asyncio.sleep(0.05)
        for headers in ({}, {"Range": "bytes=1000-15000000"}, {"Range": "bytes=5-9"}):
            got = []
            for base in (sim.url, cluster.url):
                async with s.get(f"{base}/task/{uuid}/download/all.zip", headers=headers) as r:
                    got.append((r.status, r.headers.get("Content-Length"), await r.read()))
            assert got[0] == got[1], headers
        async with s.get(f"{cluster.url}/task/{uuid}/info") as r:
            assert (await r.json())["uuid"] == uuid
    if hasattr(os, "splice"):
        assert len(spliced) == 2
