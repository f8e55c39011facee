"""Side by side: the node itself, this cluster and the original ClusterODM 1.5.8, in one run.

The figures of issue #18, each taken from the three in turn within every run (the order rotates
from run to run), medians of ``runs``; a run's download and upload figures are each the median
of ``repeats`` transfers, interleaved between the three:

- ``GET /info`` requests/s: the cluster answers it itself (the node's own ``/info`` is shown for
  reference, it is not the same work);
- ``GET /task/<uuid>/info`` requests/s of one finished task, as a ratio to the node straight;
- 100 images of 1 MB (pyodm's way: one request each, 10 at a time) from the first byte until the
  task shows RUNNING *on the node*, as a ratio to uploading straight to the node;
- ``all.zip`` MB/s (one large archive), as a ratio to the node straight;
- RSS of each cluster idle and its peak during the uploads.

Beside every rate: CPU time per request (or per upload) of each process, read from
``/proc/<pid>/stat`` over the whole process tree, the figure least moved by other work on a
shared machine; and the machine's load average (``/proc/loadavg``) while it was taken.

The node is the simulated one (``clusterodm.simnode``) or, with ``real``, the real NodeODM 2.2.4
in test mode (``nodeodm.sh``; its test results get a large orthophoto so that all.zip is large).
The original runs only when asked (``clusterodm-original.sh``; the node is added through its
admin CLI, ``NODE ADD``). Requests/s are driven by ``wrk`` when it is installed (one thread,
32 connections, as in the issue), else by ``bench/loadgen.py``.

    python -m bench --only "side by side" --against-original --real
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.run import (
    REPO,
    Proc,
    RssSampler,
    _make_task,
    _run_client,
    cpu_s,
    get_load,
    routes_for,
    rss_mb,
    start_proxy,
    start_simnode,
)

CONNECTIONS = 32


@dataclass(frozen=True)
class SideProfile:
    runs: int
    seconds: float
    images: int
    image_size: int
    zip_size: int
    #: downloads and uploads per server within a run, its figure their median: one transfer
    #: lasts about a second, and on a shared machine single ones vary by a quarter
    repeats: int = 1


SIDE_FULL = SideProfile(
    runs=3, seconds=5.0, images=100, image_size=1_000_000, zip_size=256 << 20, repeats=3
)
SIDE_QUICK = SideProfile(runs=1, seconds=1.0, images=10, image_size=1_000_000, zip_size=8 << 20)


# --- processes ------------------------------------------------------------------------------


def peer_script(name: str, env_var: str) -> Path | None:
    """``nodeodm.sh`` or ``clusterodm-original.sh``: from ``env_var``, else ../shared/peers."""
    given = os.environ.get(env_var)
    candidates = [Path(given)] if given else []
    candidates += [
        REPO.parent / "shared" / "peers" / name,
        REPO.parent.parent / "shared/peers" / name,
    ]
    return next((c for c in candidates if c.is_file()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                out += [int(c) for c in f.read().split()]
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a script's node process, for instance)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def tree_cpu_s(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_s(p)
    return total


def main_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """RSS of the largest process of the tree (the server, not the script that started it)."""
    best = float("nan")
    for p in tree(pid):
        with contextlib.suppress(OSError):
            value = rss_mb(p, field)
            best = value if best != best else max(best, value)
    return best


def main_pid(pid: int) -> int:
    sizes = []
    for p in tree(pid):
        with contextlib.suppress(OSError):
            sizes.append((rss_mb(p), p))
    return max(sizes)[1] if sizes else pid


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer")
        time.sleep(0.05)


def _big_results(work: Path, size: int) -> Path:
    """A working folder for the real NodeODM whose test results hold an orthophoto of ``size``
    random bytes, so that its all.zip is about that large (its own is 213 bytes)."""
    script = peer_script("nodeodm.sh", "NODEODM_SH")
    assert script is not None
    where = subprocess.run([str(script), "where"], capture_output=True, text=True, check=True)
    home = Path(where.stdout.split()[-1])
    results = home / "tests" / "processing_results"
    mine = work / "tests" / "processing_results"
    mine.mkdir(parents=True)
    for entry in results.iterdir():
        if entry.name != "odm_orthophoto":
            (mine / entry.name).symlink_to(entry)
    ortho = mine / "odm_orthophoto"
    ortho.mkdir()
    if (results / "odm_orthophoto").is_dir():
        for entry in (results / "odm_orthophoto").iterdir():
            if entry.name != "odm_orthophoto.tif":
                (ortho / entry.name).symlink_to(entry)
    with open(ortho / "odm_orthophoto.tif", "wb") as f:
        left = size
        while left > 0:
            f.write(os.urandom(min(left, 8 << 20)))
            left -= 8 << 20
    return work


@dataclass
class Server:
    """One of the three measured: name, URL, and the process tree whose CPU is counted."""

    name: str
    url: str
    pid: int
    stop: Callable[[], None]


def start_node(work: Path, real: bool, *, zip_size: int, running: bool) -> Server:
    """A node: ``running`` keeps its tasks RUNNING (for uploads), else they finish at once with
    a large all.zip."""
    if not real:
        args = ["-q", "64", "--test_seconds", "600"] if running else ["--zip-size", str(zip_size)]
        proc, url = start_simnode(*args)
        return Server("node", url, proc.pid, proc.stop)
    script = peer_script("nodeodm.sh", "NODEODM_SH")
    if script is None:
        raise RuntimeError("the real NodeODM is not here: set NODEODM_SH to nodeodm.sh")
    port = free_port()
    folder = work / f"nodeodm-{port}"
    if running:
        folder.mkdir(parents=True)
    else:
        _big_results(folder, zip_size)
    flags = ["--test_seconds", "600" if running else "1", "--parallel_queue_processing", "4"]
    proc = Proc([str(script), str(port), *flags], "nodeodm", env={"NODEODM_WORK": str(folder)})
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/info")
    return Server("node", url, proc.pid, proc.stop)


def start_original(node: Server) -> Server:
    script = peer_script("clusterodm-original.sh", "CLUSTERODM_ORIGINAL_SH")
    if script is None:
        raise RuntimeError("the original is not here: set CLUSTERODM_ORIGINAL_SH")
    port, cli, web = free_port(), free_port(), free_port()
    proc = Proc([str(script), str(port), str(cli), str(web)], "original")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/info")
        node_port = node.url.rsplit(":", 1)[1]
        _admin(cli, f"NODE ADD 127.0.0.1 {node_port}", "OK")
        deadline = time.monotonic() + 60
        while "[online]" not in _admin(cli, "NODE LIST", "#>"):
            if time.monotonic() > deadline:
                raise RuntimeError("the original never saw its node online")
            time.sleep(0.2)
    except BaseException:
        proc.stop()
        raise
    return Server("original", url, proc.pid, proc.stop)


def _admin(port: int, command: str, until: str) -> str:
    """One command on the original's admin CLI; its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        got = b""
        while b"#>" not in got:
            got += s.recv(4096) or b"#>"
        s.sendall(command.encode() + b"\r\n")
        got = b""
        while until.encode() not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got.decode(errors="replace")


def start_ours(work: Path, name: str, node: Server, uuids: list[str]) -> Server:
    port = int(node.url.rsplit(":", 1)[1])
    proxy = start_proxy(work, name, [port], routes_for(uuids, [port], len(uuids)))
    return Server("ours", proxy.url, proxy.proc.pid, proxy.stop)


# --- measuring ------------------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def rate(url: str, seconds: float, tool: str) -> dict[str, Any]:
    """Requests/s of ``GET url`` over CONNECTIONS keep-alive connections."""
    with urllib.request.urlopen(url, timeout=10) as response:  # the answer is not an error
        body = response.read()
    if response.status != 200 or b'"error"' in body:
        raise RuntimeError(f"{url} answers {response.status} {body[:200]!r}")
    if tool == "wrk":
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", url],
            capture_output=True,
            text=True,
            check=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = done.stdout
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        total = re.search(r"(\d+) requests in", out)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        if found is None or total is None:
            raise RuntimeError(f"wrk: {out}{done.stderr}")
        errors = int(bad.group(1)) if bad else 0
        errors += sum(int(g) for g in sock.groups()) if sock else 0
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return {
            "requests_per_s": float(found.group(1)),
            "requests": int(total.group(1)),
            "errors": errors,
            "generator_cpu": cpu / seconds,
        }
    return dict(get_load([url], CONNECTIONS, seconds=seconds))


@dataclass
class Figure:
    """One figure: per server, the value of every run and the CPU spent per unit."""

    values: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, who: str, value: float) -> None:
        self.values.setdefault(who, []).append(value)

    def add_cpu(self, who: str, process: str, value: float) -> None:
        self.cpu.setdefault(who, {}).setdefault(process, []).append(value)

    def median(self, who: str) -> float:
        got = self.values.get(who)
        return statistics.median(got) if got else float("nan")

    def ratios(self, a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(self.values.get(a, []), self.values.get(b, []), strict=False)]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            who: {"median": self.median(who), "runs": v} for who, v in self.values.items()
        }
        out["cpu"] = {
            who: {proc: statistics.median(v) for proc, v in procs.items()}
            for who, procs in self.cpu.items()
        }
        out["load"] = [min(self.loads, default=0.0), max(self.loads, default=0.0)]
        out["errors"] = self.errors
        return out


def _rotations(names: list[str], runs: int) -> Iterator[list[str]]:
    for i in range(runs):
        k = i % len(names)
        yield names[k:] + names[:k]


def _processes(servers: dict[str, Server], who: str) -> dict[str, int]:
    """The processes that work for one measured path: the node, and the cluster if any."""
    out = {"node": servers["node"].pid}
    if who != "node":
        out[who] = servers[who].pid
    return out


def measure_rates(
    servers: dict[str, Server], paths: dict[str, str], p: SideProfile, tool: str
) -> Figure:
    figure = Figure()
    for order in _rotations(list(paths), p.runs):
        for who in order:
            figure.loads.append(load_average())
            procs = _processes(servers, who)
            before = {k: tree_cpu_s(pid) for k, pid in procs.items()}
            result = rate(servers[who].url + paths[who], p.seconds, tool)
            figure.add(who, result["requests_per_s"])
            figure.errors[who] = figure.errors.get(who, 0) + result["errors"]
            for k, pid in procs.items():
                used = tree_cpu_s(pid) - before[k]
                figure.add_cpu(who, k, used / max(1, result["requests"]) * 1e6)
            figure.add_cpu(who, "generator", result["generator_cpu"] * 100)
    return figure


def _repeated(order: list[str], repeats: int) -> Iterator[str]:
    """Each server of a run's order ``repeats`` times, interleaved: a, b, c, a, b, c, ..."""
    for _ in range(repeats):
        yield from order


def measure_downloads(servers: dict[str, Server], uuid: str, p: SideProfile) -> Figure:
    figure = Figure()
    for order in _rotations(list(servers), p.runs):
        rates: dict[str, list[float]] = {}
        for who in _repeated(order, p.repeats):
            figure.loads.append(load_average())
            procs = _processes(servers, who)
            before = {k: tree_cpu_s(pid) for k, pid in procs.items()}
            url = f"{servers[who].url}/task/{uuid}/download/all.zip"
            got = _run_client("bench.loadgen", "download", "download", url)
            if got["status"] != 200 or got["bytes"] != got["expected"] or got["bytes"] < 1000:
                raise RuntimeError(f"all.zip through {who}: {got}")
            rates.setdefault(who, []).append(got["mb_per_s"])
            for k, pid in procs.items():
                figure.add_cpu(who, k, (tree_cpu_s(pid) - before[k]) / got["bytes"] * 1e9)
        for who in order:
            figure.add(who, statistics.median(rates[who]))
    return figure


def measure_uploads(servers: dict[str, Server], p: SideProfile) -> tuple[Figure, Figure]:
    """Seconds to RUNNING on the node, and each cluster's peak RSS during its uploads."""
    figure, peaks = Figure(), Figure()
    node = servers["node"].url
    for order in _rotations(list(servers), p.runs):
        seconds: dict[str, list[float]] = {}
        for who in _repeated(order, p.repeats):
            figure.loads.append(load_average())
            procs = _processes(servers, who)
            before = {k: tree_cpu_s(pid) for k, pid in procs.items()}
            args = ["--images", str(p.images), "--size", str(p.image_size), "--node", node]
            with RssSampler(main_pid(servers[who].pid)) as sampler:
                got = _run_client("bench.upload", "upload client", servers[who].url, *args)
            seconds.setdefault(who, []).append(got["seconds"])
            peaks.add(who, sampler.peak)
            for k, pid in procs.items():
                figure.add_cpu(who, k, tree_cpu_s(pid) - before[k])
            figure.add_cpu(who, "client", got["client_cpu_s"])
        for who in order:
            figure.add(who, statistics.median(seconds[who]))
    return figure, peaks


# --- the step -------------------------------------------------------------------------------


def run_side_by_side(
    work: Path, *, real: bool, original: bool, quick: bool, runs: int = 0, tool: str = ""
) -> dict[str, Any]:
    p = SIDE_QUICK if quick else SIDE_FULL
    if runs:
        p = dataclasses.replace(p, runs=runs)
    tool = tool or ("wrk" if shutil.which("wrk") else "loadgen")
    result: dict[str, Any] = {"node": "real NodeODM" if real else "simnode", "tool": tool}
    result["profile"] = p.__dict__
    started: list[Server] = []
    try:
        # GETs and the download: one finished task with a large all.zip
        node = start_node(work, real, zip_size=p.zip_size, running=False)
        started.append(node)
        servers = {"node": node}
        if original:
            servers["original"] = orig = start_original(node)
            started.append(orig)
            uuid = asyncio.run(_make_task(orig.url))  # the original keeps the uuid on the node
        else:
            uuid = asyncio.run(_make_task(node.url, set_uuid=str(uuidlib.uuid4())))
        servers["ours"] = ours = start_ours(work, "side-get", node, [uuid])
        started.append(ours)
        time.sleep(1.0)
        result["rss_idle_mb"] = {
            who: main_rss_mb(servers[who].pid) for who in servers if who != "node"
        }
        info = measure_rates(servers, {w: "/info" for w in servers}, p, tool)
        result["info_rps"] = info.summary()
        task = measure_rates(servers, {w: f"/task/{uuid}/info" for w in servers}, p, tool)
        result["task_info_rps"] = task.summary()
        result["task_info_ratio_runs"] = {
            who: task.ratios(who, "node") for who in servers if who != "node"
        }
        zips = measure_downloads(servers, uuid, p)
        result["zip_mb_s"] = zips.summary()
        result["zip_ratio_runs"] = {
            who: zips.ratios(who, "node") for who in servers if who != "node"
        }
        for server in reversed(started):
            server.stop()
        started.clear()

        # uploads: a node that keeps its tasks RUNNING (each run removes its task)
        node = start_node(work, real, zip_size=0, running=True)
        started.append(node)
        servers = {"node": node}
        if original:
            servers["original"] = start_original(node)
            started.append(servers["original"])
        servers["ours"] = start_ours(work, "side-upload", node, [])
        started.append(servers["ours"])
        uploads, peaks = measure_uploads(servers, p)
        result["upload_s"] = uploads.summary()
        result["upload_ratio_runs"] = {
            who: uploads.ratios(who, "node") for who in servers if who != "node"
        }
        result["rss_peak_upload_mb"] = peaks.summary()
    finally:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop()
    return result


# --- the table ------------------------------------------------------------------------------


def _f(value: float, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def _med(fig: dict[str, Any], who: str) -> float:
    return float(fig.get(who, {}).get("median", float("nan")))


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def render_side(r: dict[str, Any]) -> str:
    """The issue's table: per figure original, ours, ours/original, ours/direct, goal."""
    has_original = "original" in r["info_rps"]
    nan = float("nan")
    rows = [
        (
            "figure",
            "direct",
            "original",
            "ours",
            "ours/original",
            "ours/direct",
            "original/direct",
            "goal",
            "load",
        )
    ]

    def load(fig: dict[str, Any]) -> str:
        lo, hi = fig["load"]
        return f"{lo:.1f}-{hi:.1f}"

    info, task, zips, up = r["info_rps"], r["task_info_rps"], r["zip_mb_s"], r["upload_s"]
    o = (lambda fig: _med(fig, "original")) if has_original else (lambda fig: nan)
    rows.append(
        (
            "GET /info req/s",
            f"({_f(_med(info, 'node'), ',.0f')})",
            _f(o(info), ",.0f"),
            _f(_med(info, "ours"), ",.0f"),
            _f(_med(info, "ours") / o(info), ".2f") + "x",
            "-",
            "-",
            ">= 1.2x the original",
            load(info),
        )
    )
    ratios = r["task_info_ratio_runs"]
    rows.append(
        (
            "GET /task/<uuid>/info req/s",
            _f(_med(task, "node"), ",.0f"),
            _f(o(task), ",.0f"),
            _f(_med(task, "ours"), ",.0f"),
            _f(_med(task, "ours") / o(task), ".2f") + "x",
            _spread(ratios.get("ours", [])),
            _spread(ratios.get("original", [])),
            ">= 0.9 every run",
            load(task),
        )
    )
    ratios = r["upload_ratio_runs"]
    images = r["profile"]["images"]
    size_mb = r["profile"]["image_size"] / 1e6
    rows.append(
        (
            f"{images} x {size_mb:.0f} MB to RUNNING on the node, s",
            _f(_med(up, "node"), ".2f"),
            _f(o(up), ".2f"),
            _f(_med(up, "ours"), ".2f"),
            _f(_med(up, "ours") / o(up), ".2f") + "x",
            _spread(ratios.get("ours", [])),
            _spread(ratios.get("original", [])),
            "<= 1.2 every run",
            load(up),
        )
    )
    ratios = r["zip_ratio_runs"]
    rows.append(
        (
            f"all.zip {r['profile']['zip_size'] / 1e6:.0f} MB, MB/s",
            _f(_med(zips, "node"), ",.0f"),
            _f(o(zips), ",.0f"),
            _f(_med(zips, "ours"), ",.0f"),
            _f(_med(zips, "ours") / o(zips), ".2f") + "x",
            _spread(ratios.get("ours", [])),
            _spread(ratios.get("original", [])),
            ">= 0.95 every run",
            load(zips),
        )
    )
    idle, peak = r["rss_idle_mb"], r["rss_peak_upload_mb"]
    rows.append(
        (
            "RSS idle / peak during upload, MB",
            "-",
            f"{_f(idle.get('original', nan), '.0f')} / {_f(_med(peak, 'original'), '.0f')}",
            f"{_f(idle.get('ours', nan), '.0f')} / {_f(_med(peak, 'ours'), '.0f')}",
            "-",
            "-",
            "-",
            "keep",
            load(up),
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    profile = r["profile"]
    lines = [f"Side by side, {r['node']}, {r['tool']}, medians of {profile['runs']} runs"]
    if profile.get("repeats", 1) > 1:
        lines[0] += f" (transfers: each run's median of {profile['repeats']})"
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("CPU per request (us) / per GB (s) / per upload (s), medians:")
    for label, fig, unit in (
        ("GET /info", info, "us"),
        ("task info", task, "us"),
        ("all.zip", zips, "s/GB"),
        ("upload", up, "s"),
    ):
        parts = []
        for who, procs in fig["cpu"].items():
            inner = ", ".join(
                f"{k} {v:.0f}" if unit == "us" else f"{k} {v:.2f}"
                for k, v in procs.items()
                if k != "generator"
            )
            parts.append(f"{who}: {inner}")
        lines.append(f"  {label} ({unit}): " + "; ".join(parts))
    errors = {
        who: sum(r[k]["errors"].get(who, 0) for k in ("info_rps", "task_info_rps"))
        for who in r["info_rps"]["errors"]
    }
    lines.append(
        "  failed requests (non-2xx, socket errors, wrk's 2 s timeout): "
        + ", ".join(f"{who} {n}" for who, n in errors.items())
    )
    return "\n".join(lines)


def save(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
