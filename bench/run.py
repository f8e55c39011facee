"""The cluster's benchmark suite: what the proxy adds over talking to a node directly.

Every figure is taken twice in the same run on the same machine, once straight to a simulated
node and once through the cluster, and reported as a ratio (or a difference) against the direct
baseline, so the goals hold on a small noisy machine. The node, the proxy and the load generator
each run in their own process; the generator's own ceiling is measured against a fixed-answer
server and printed beside the figures it produced.

    python -m bench                 # full suite, medians of 3 runs (about 5 minutes)
    python -m bench --quick         # smaller sizes, 1 run (about a minute); what CI runs
    python -m bench --only splitmerge [--against-original]
                                    # ODM's split-merge on real NodeODM nodes: the phase
                                    # times, ours beside the original's (bench/splitmerge.py)
    python -m bench --only faults   # the proxy killed -9 at random moments (bench/faults.py)
    python -m bench --target URL --node URL [--token T]
                                    # any running cluster (e.g. the Node.js original) in front
                                    # of the node at --node: the figures that need no control
                                    # of the cluster's process
    python -m bench --only "side by side" --real --against-original
                                    # the node, this cluster and the original ClusterODM 1.5.8
                                    # interleaved, against simnode and the real NodeODM
                                    # (bench/sidebyside.py)

Prints a table and writes JSON (``bench/results/<timestamp>.json`` or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # ``python bench/run.py``
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from clusterodm.model import Node, Route  # noqa: E402
from clusterodm.store.sqlite import SqliteStore  # noqa: E402

RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Profile:
    runs: int
    rps_seconds: float
    concurrency: int
    latency_requests: int
    zip_size: int
    images: int
    image_size: int
    nodes: int
    routes: int
    pollers: int
    poll_seconds: float


FULL = Profile(
    runs=3,
    rps_seconds=5.0,
    concurrency=64,
    latency_requests=3000,
    zip_size=1_000_000_000,
    images=200,
    image_size=2_000_000,
    nodes=100,
    routes=100_000,
    pollers=1000,
    poll_seconds=10.0,
)
QUICK = Profile(
    runs=1,
    rps_seconds=2.0,
    concurrency=64,
    latency_requests=1000,
    zip_size=100_000_000,
    images=40,
    image_size=2_000_000,
    nodes=20,
    routes=20_000,
    pollers=200,
    poll_seconds=3.0,
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


# --- processes ------------------------------------------------------------------------------


class Proc:
    """A child process whose output is drained by a thread (the last lines are kept)."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**_env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: deque[str] = deque(maxlen=200)
        self._first: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._drain, daemon=True, name=f"drain {name}").start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._seen:
                self.lines.append(line.rstrip())
                self._seen.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.name} did not start: {self.tail()}")
                self._seen.wait(min(left, 0.5))

    def tail(self) -> str:
        return "\n".join(list(self.lines)[-20:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds used so far by process ``pid`` (nan when unknown)."""
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples a process's VmRSS every 20 ms on a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start_simnode(*args: str) -> tuple[Proc, str]:
    proc = Proc(_python("-m", "clusterodm.simnode", "--port", "0", *args), "simnode")
    line = proc.wait_for(lambda s: "SimNode listening on" in s)
    return proc, line.split()[-1]


def start_null() -> tuple[Proc, str]:
    proc = Proc(_python("-m", "bench.loadgen", "null"), "null server")
    line = proc.wait_for(lambda s: "null server listening on" in s)
    return proc, line.split()[-1]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def _prepare_store(path: Path, nodes: list[int], routes: list[Route]) -> None:
    store = SqliteStore(path)
    await store.open()
    try:
        for port in nodes:
            await store.put_node(Node("127.0.0.1", port))
        for i in range(0, len(routes), 20_000):
            await store.put_routes(routes[i : i + 20_000])
    finally:
        await store.close()


@dataclass
class Proxy:
    proc: Proc
    url: str
    startup_s: float
    data_dir: Path

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_proxy(work: Path, name: str, nodes: list[int], routes: list[Route]) -> Proxy:
    """A cluster in its own process with ``nodes`` and ``routes`` already in its store;
    ``startup_s`` runs from the process's start to its first answer to ``GET /info``."""
    data_dir = work / name
    data_dir.mkdir(parents=True)
    asyncio.run(_prepare_store(data_dir / "clusterodm.db", nodes, routes))
    argv = _python(
        "-m",
        "clusterodm",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--admin-cli-port",
        "0",
        "--admin-web-port",
        "0",
        "--data-dir",
        str(data_dir),
    )
    proc = Proc(argv, f"cluster {name}")
    line = proc.wait_for(lambda s: "listening on port" in s)
    url = f"http://127.0.0.1:{line.split()[-1]}"
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/info", timeout=5) as response:
                if response.status == 200:
                    break
        time.sleep(0.005)
    return Proxy(proc, url, time.monotonic() - proc.started, data_dir)


def routes_for(uuids: list[str], node_ports: list[int], total: int) -> list[Route]:
    """Routes of the real tasks, then made-up ones to ``total``, spread over the nodes."""
    now = int(time.time() * 1000)
    routes: list[Route] = []
    for i, u in enumerate(uuids):
        routes.append(Route(u, f"127.0.0.1:{node_ports[i % len(node_ports)]}", "", now))
    for i in range(total - len(routes)):
        port = node_ports[i % len(node_ports)]
        routes.append(Route(str(uuidlib.uuid4()), f"127.0.0.1:{port}", "", now))
    return routes


# --- clients --------------------------------------------------------------------------------


def _run_client(module: str, what: str, *args: str) -> dict[str, Any]:
    """Run one of bench's client programs in its own process; its JSON answer."""
    out = subprocess.run(
        _python("-m", module, *args),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def loadgen(*args: str) -> dict[str, Any]:
    return _run_client("bench.loadgen", "load generator", *args)


def get_load(urls: list[str], concurrency: int, *, seconds: float = 0, requests: int = 0) -> Any:
    args = ["get", *urls, "--concurrency", str(concurrency)]
    args += ["--seconds", str(seconds)] if seconds else ["--requests", str(requests)]
    return loadgen(*args)


def upload(url: str, profile: Profile, token: str, node: str) -> dict[str, Any]:
    args = ["--images", str(profile.images), "--size", str(profile.image_size), "--node", node]
    if token:
        args += ["--token", token]
    return _run_client("bench.upload", "upload client", url, *args)


async def _make_task(url: str, token: str = "", set_uuid: str | None = None) -> str:
    """One small finished task (through a cluster, or straight on a node)."""
    query = {"token": token} if token else {}
    headers = {"set-uuid": set_uuid} if set_uuid else {}
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("name", "bench")
        async with http.post(
            f"{url}/task/new/init", data=form, params=query, headers=headers
        ) as response:
            uuid: str = (await response.json(content_type=None))["uuid"]
        data = aiohttp.FormData()
        data.add_field("images", b"\xff\xd8" + bytes(4096), filename="IMG_0001.JPG")
        async with http.post(f"{url}/task/new/upload/{uuid}", data=data, params=query) as r:
            assert (await r.json(content_type=None)) == {"success": True}
        async with http.post(f"{url}/task/new/commit/{uuid}", params=query) as r:
            await r.read()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            async with http.get(f"{url}/task/{uuid}/info", params=query) as r:
                info = await r.json(content_type=None)
            if info.get("status", {}).get("code") == 40:
                return uuid
            await asyncio.sleep(0.05)
    raise RuntimeError(f"task {uuid} did not complete")


def _with_token(url: str, token: str) -> str:
    return f"{url}?token={token}" if token else url


# --- the suite ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Context:
    profile: Profile
    work: Path
    token: str = ""
    node_url: str = ""
    cluster_url: str = ""
    uuid: str = ""
    proxy: Proxy | None = None
    node_pid: int | None = None
    external: bool = False
    real: bool = False  # side by side also against the real NodeODM
    original: bool = False  # side by side with the original ClusterODM
    tool: str = ""  # wrk or loadgen for the side-by-side rates ("" = wrk when installed)
    quick: bool = False

    @property
    def proxy_pid(self) -> int | None:
        return self.proxy.proc.pid if self.proxy is not None else None


def bench_generator(ctx: Context, figures: dict[str, Any]) -> None:
    null, null_url = start_null()
    try:
        results = [
            get_load([f"{null_url}/task/x/info"], ctx.profile.concurrency, seconds=2.0)
            for _ in range(ctx.profile.runs)
        ]
    finally:
        null.stop()
    figures["generator_ceiling_rps"] = median([r["requests_per_s"] for r in results])
    figures["generator_loop"] = results[0]["loop"]


def bench_throughput(ctx: Context, figures: dict[str, Any]) -> None:
    p = ctx.profile
    direct_url = _with_token(f"{ctx.node_url}/task/{ctx.uuid}/info", "")
    proxy_url = _with_token(f"{ctx.cluster_url}/task/{ctx.uuid}/info", ctx.token)
    direct, proxied = [], []
    node_cpu, proxy_cpu = [], []
    for _ in range(p.runs):
        before = cpu_s(ctx.node_pid)
        direct.append(get_load([direct_url], p.concurrency, seconds=p.rps_seconds))
        node_cpu.append((cpu_s(ctx.node_pid) - before) / max(1, direct[-1]["requests"]))
        before = cpu_s(ctx.proxy_pid)
        proxied.append(get_load([proxy_url], p.concurrency, seconds=p.rps_seconds))
        proxy_cpu.append((cpu_s(ctx.proxy_pid) - before) / max(1, proxied[-1]["requests"]))
    # CPU per request, the figure least disturbed by other work on the machine
    figures["node_cpu_us_per_request"] = median(node_cpu) * 1e6
    figures["cluster_cpu_us_per_request"] = median(proxy_cpu) * 1e6
    figures["info_rps_direct"] = median([r["requests_per_s"] for r in direct])
    figures["info_rps_cluster"] = median([r["requests_per_s"] for r in proxied])
    figures["info_rps_ratio"] = figures["info_rps_cluster"] / figures["info_rps_direct"]
    figures["info_errors"] = sum(r["errors"] for r in direct + proxied)
    figures["info_error_samples"] = [s for r in direct + proxied for s in r["error_samples"]][:5]
    figures["generator_cpu_direct"] = median([r["generator_cpu"] for r in direct])
    figures["generator_cpu_cluster"] = median([r["generator_cpu"] for r in proxied])


def _latency_pair(url_a: str, url_b: str, p: Profile) -> tuple[list[Any], list[Any]]:
    a, b = [], []
    for _ in range(p.runs):
        get_load([url_a], 1, requests=200)  # warm-up
        a.append(get_load([url_a], 1, requests=p.latency_requests))
        get_load([url_b], 1, requests=200)
        b.append(get_load([url_b], 1, requests=p.latency_requests))
    return a, b


def bench_latency(ctx: Context, figures: dict[str, Any]) -> None:
    direct_url = f"{ctx.node_url}/task/{ctx.uuid}/info"
    proxy_url = _with_token(f"{ctx.cluster_url}/task/{ctx.uuid}/info", ctx.token)
    direct, proxied = _latency_pair(direct_url, proxy_url, ctx.profile)
    for pct in ("p50", "p99"):
        figures[f"latency_{pct}_direct_ms"] = median([r[f"{pct}_ms"] for r in direct])
        figures[f"latency_{pct}_cluster_ms"] = median([r[f"{pct}_ms"] for r in proxied])
        figures[f"latency_{pct}_added_ms"] = median(
            [c[f"{pct}_ms"] - d[f"{pct}_ms"] for d, c in zip(direct, proxied, strict=True)]
        )
    figures["latency_errors"] = sum(r["errors"] for r in direct + proxied)


def bench_download(ctx: Context, figures: dict[str, Any]) -> None:
    direct_url = f"{ctx.node_url}/task/{ctx.uuid}/download/all.zip"
    proxy_url = _with_token(f"{ctx.cluster_url}/task/{ctx.uuid}/download/all.zip", ctx.token)
    direct, proxied, growth = [], [], []
    for _ in range(ctx.profile.runs):
        direct.append(loadgen("download", direct_url))
        if ctx.proxy is not None:
            before = rss_mb(ctx.proxy.proc.pid)
            with RssSampler(ctx.proxy.proc.pid) as sampler:
                proxied.append(loadgen("download", proxy_url))
            growth.append(max(0.0, sampler.peak - before))
        else:
            proxied.append(loadgen("download", proxy_url))
    for r in direct + proxied:
        if r["bytes"] != r["expected"] or r["status"] != 200:
            raise RuntimeError(f"all.zip download incomplete: {r}")
    figures["zip_bytes"] = direct[0]["bytes"]
    figures["zip_mb_s_direct"] = median([r["mb_per_s"] for r in direct])
    figures["zip_mb_s_cluster"] = median([r["mb_per_s"] for r in proxied])
    figures["zip_ratio"] = figures["zip_mb_s_cluster"] / figures["zip_mb_s_direct"]
    figures["zip_rss_growth_mb"] = max(growth) if growth else None


def bench_upload(ctx: Context, figures: dict[str, Any]) -> None:
    """The task's images to a node that keeps tasks RUNNING, straight and through a cluster."""
    p = ctx.profile
    node = proxy = None
    node_url, cluster_url = ctx.node_url, ctx.cluster_url
    try:
        if not ctx.external:
            node, node_url = start_simnode("-q", "64", "--test_seconds", "600")
            proxy = start_proxy(ctx.work, "upload", [_port(node_url)], [])
            cluster_url = proxy.url
        direct, proxied = [], []
        node_cpu, proxy_cpu = [], []  # CPU seconds per upload: the figures least moved by noise
        node_pid = node.pid if node is not None else None
        proxy_pid = proxy.proc.pid if proxy is not None else None
        for _ in range(p.runs):
            before = cpu_s(node_pid)
            direct.append(upload(node_url, p, "", node_url))
            node_cpu.append(cpu_s(node_pid) - before)
            before = cpu_s(proxy_pid)
            proxied.append(upload(cluster_url, p, ctx.token, node_url))
            proxy_cpu.append(cpu_s(proxy_pid) - before)
    finally:
        if proxy is not None:
            proxy.stop()
        if node is not None:
            node.stop()
    figures["upload_cpu_s_node"] = median(node_cpu)
    figures["upload_cpu_s_cluster"] = median(proxy_cpu)
    figures["upload_images"] = p.images
    figures["upload_image_bytes"] = p.image_size
    figures["upload_s_direct"] = median([r["seconds"] for r in direct])
    figures["upload_s_cluster"] = median([r["seconds"] for r in proxied])
    figures["upload_ratio"] = figures["upload_s_cluster"] / figures["upload_s_direct"]
    figures["upload_cpu_s_client"] = median([r["client_cpu_s"] for r in direct + proxied])
    for part in ("upload_s", "commit_s", "to_running_s"):
        figures[f"upload_{part}_parts_cluster"] = median([r[part] for r in proxied])
        figures[f"upload_{part}_parts_direct"] = median([r[part] for r in direct])


def bench_routes(ctx: Context, figures: dict[str, Any]) -> None:
    """Lookup cost: the same poll through a cluster holding 10 routes and one holding many;
    also how long the large one takes from start to its first answer."""
    p = ctx.profile
    port = _port(ctx.node_url)
    small = start_proxy(ctx.work, "routes-small", [port], routes_for([ctx.uuid], [port], 10))
    big = start_proxy(ctx.work, "routes-big", [port], routes_for([ctx.uuid], [port], p.routes))
    try:
        figures["startup_s_small"] = small.startup_s
        figures["startup_s_routes"] = big.startup_s
        figures["routes"] = p.routes
        a, b = _latency_pair(
            f"{small.url}/task/{ctx.uuid}/info", f"{big.url}/task/{ctx.uuid}/info", p
        )
    finally:
        small.stop()
        big.stop()
    figures["lookup_p50_small_ms"] = median([r["p50_ms"] for r in a])
    figures["lookup_p99_small_ms"] = median([r["p99_ms"] for r in a])
    figures["lookup_p50_routes_ms"] = median([r["p50_ms"] for r in b])
    figures["lookup_p99_routes_ms"] = median([r["p99_ms"] for r in b])
    figures["lookup_p99_ratio"] = figures["lookup_p99_routes_ms"] / figures["lookup_p99_small_ms"]


def bench_load(ctx: Context, figures: dict[str, Any]) -> None:
    """Many nodes, many routes, many pollers: the proxy's memory and that nothing fails."""
    p = ctx.profile
    farm = Proc(_python("-m", "bench.farm", "--nodes", str(p.nodes), "--tasks", "10"), "node farm")
    proxy = None
    try:
        line = farm.wait_for(lambda s: s.startswith('{"nodes"'), timeout=300)
        listing = json.loads(line)["nodes"]
        ports = [n["port"] for n in listing]
        uuids = [u for n in listing for u in n["tasks"]]
        # real tasks' routes, each on the node that has it
        now = int(time.time() * 1000)
        real = [Route(u, f"127.0.0.1:{n['port']}", "", now) for n in listing for u in n["tasks"]]
        filler = routes_for([], ports, p.routes - len(real))
        proxy = start_proxy(ctx.work, "load", ports, real + filler)
        figures["load_startup_s"] = proxy.startup_s
        figures["load_rss_before_mb"] = rss_mb(proxy.proc.pid)
        urls = [f"{proxy.url}/task/{u}/info" for u in uuids]
        result = get_load(urls, p.pollers, seconds=p.poll_seconds)
        figures["load_nodes"] = p.nodes
        figures["load_routes"] = p.routes
        figures["load_pollers"] = p.pollers
        figures["load_rps"] = result["requests_per_s"]
        figures["load_requests"] = result["requests"]
        figures["load_errors"] = result["errors"]
        figures["load_error_samples"] = result["error_samples"]
        figures["load_p99_ms"] = result["p99_ms"]
        figures["load_rss_peak_mb"] = rss_mb(proxy.proc.pid, "VmHWM")
    finally:
        if proxy is not None:
            proxy.stop()
        farm.stop()


def bench_side_by_side(ctx: Context, figures: dict[str, Any]) -> None:
    """The node, this cluster and (``--against-original``) the original, interleaved; against
    the simulated node, and with ``--real`` the real NodeODM too (``bench/sidebyside.py``)."""
    from bench.sidebyside import run_side_by_side

    kinds = [("side_sim", False)] + ([("side_real", True)] if ctx.real else [])
    for key, real in kinds:
        print(f"   {'real NodeODM' if real else 'simnode'} ...", file=sys.stderr, flush=True)
        figures[key] = run_side_by_side(
            ctx.work,
            real=real,
            original=ctx.original,
            quick=ctx.quick,
            runs=ctx.profile.runs if ctx.profile.runs != (1 if ctx.quick else 3) else 0,
            tool=ctx.tool,
        )


# --- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    what: str
    measured: str
    goal: str
    ok: bool | None


def bench_faults_step(ctx: Context, figures: dict[str, Any]) -> None:
    """The proxy killed at random moments (``bench/faults.py``); not in the default run."""
    from bench.faults import bench_faults

    figures.update(bench_faults(8 if ctx.profile.runs == 1 else 25))


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return format(value, spec)


def goals(f: dict[str, Any]) -> list[Goal]:
    def get(key: str) -> Any:
        return f.get(key)

    def ok(cond: Callable[[], bool], *keys: str) -> bool | None:
        if any(get(k) is None for k in keys):
            return None
        return cond()

    faults = [
        Goal(
            f"kill -9 rounds: {get('faults_kills')} kills, {get('faults_tasks')} tasks",
            f"{get('faults_images')} images compared, {get('faults_mismatches')} mismatches",
            "0 mismatches",
            ok(lambda: f["faults_mismatches"] == 0, "faults_mismatches"),
        )
    ]
    out = [
        *(faults if get("faults_mismatches") is not None else []),  # only run on demand
        Goal(
            "GET /task/<uuid>/info req/s, 64 clients",
            f"{_fmt(get('info_rps_cluster'), '.0f')} vs {_fmt(get('info_rps_direct'), '.0f')}"
            f" = {_fmt(get('info_rps_ratio'), '.2f')}x, {get('info_errors')} errors",
            ">= 0.6x, no errors",
            ok(lambda: f["info_rps_ratio"] >= 0.6 and f["info_errors"] == 0, "info_rps_ratio"),
        ),
        Goal(
            "latency added per request, 1 client",
            f"p50 {_fmt(get('latency_p50_added_ms'), '.2f')} ms / "
            f"p99 {_fmt(get('latency_p99_added_ms'), '.2f')} ms",
            "<= 1 ms / <= 5 ms",
            ok(
                lambda: f["latency_p50_added_ms"] <= 1 and f["latency_p99_added_ms"] <= 5,
                "latency_p50_added_ms",
            ),
        ),
        Goal(
            f"all.zip {_fmt((get('zip_bytes') or 0) / 1e9, '.1f')} GB download",
            f"{_fmt(get('zip_mb_s_cluster'), '.0f')} vs {_fmt(get('zip_mb_s_direct'), '.0f')}"
            f" MB/s = {_fmt(get('zip_ratio'), '.2f')}x; RSS +"
            f"{_fmt(get('zip_rss_growth_mb'), '.1f')} MB",
            ">= 0.9x; RSS grows < 50 MB",
            ok(
                lambda: f["zip_ratio"] >= 0.9 and f["zip_rss_growth_mb"] < 50,
                "zip_ratio",
                "zip_rss_growth_mb",
            ),
        ),
        Goal(
            f"{get('upload_images')} images x {_fmt((get('upload_image_bytes') or 0) / 1e6, '.0f')}"
            " MB: first byte to RUNNING",
            f"{_fmt(get('upload_s_cluster'), '.2f')} vs {_fmt(get('upload_s_direct'), '.2f')} s"
            f" = {_fmt(get('upload_ratio'), '.2f')}x",
            "<= 1.3x",
            ok(lambda: f["upload_ratio"] <= 1.3, "upload_ratio"),
        ),
        Goal(
            f"proxy RSS idle; {get('load_nodes')} nodes, {get('load_routes')} routes,"
            f" {get('load_pollers')} pollers",
            f"idle {_fmt(get('rss_idle_mb'), '.0f')} MB; loaded "
            f"{_fmt(get('load_rss_peak_mb'), '.0f')} MB; {get('load_errors')} failed",
            "< 80 MB; < 300 MB; none fail",
            ok(
                lambda: (
                    f["rss_idle_mb"] < 80 and f["load_rss_peak_mb"] < 300 and f["load_errors"] == 0
                ),
                "rss_idle_mb",
                "load_rss_peak_mb",
            ),
        ),
        Goal(
            f"route lookup p99, {get('routes')} routes vs 10",
            f"{_fmt(get('lookup_p99_routes_ms'), '.2f')} vs "
            f"{_fmt(get('lookup_p99_small_ms'), '.2f')} ms = "
            f"{_fmt(get('lookup_p99_ratio'), '.2f')}x",
            "within 1.5x",
            ok(lambda: f["lookup_p99_ratio"] <= 1.5, "lookup_p99_ratio"),
        ),
        Goal(
            f"start-up to serving, {get('routes')} routes",
            f"{_fmt(get('startup_s_routes'), '.2f')} s (10 routes: "
            f"{_fmt(get('startup_s_small'), '.2f')} s)",
            "< 2 s",
            ok(lambda: f["startup_s_routes"] < 2, "startup_s_routes"),
        ),
    ]
    return out


def render(figures: dict[str, Any], table: list[Goal]) -> str:
    rows = [("what", "measured (cluster vs direct)", "goal", "")]
    for g in table:
        mark = "n/a" if g.ok is None else ("ok" if g.ok else "MISSED")
        rows.append((g.what, g.measured, g.goal, mark))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    ceiling = figures.get("generator_ceiling_rps")
    direct = figures.get("info_rps_direct")
    if ceiling and direct:
        share = direct / ceiling
        verdict = (
            "the generator is not the bottleneck"
            if share < 0.7
            else "WARNING: the generator may be the bottleneck"
        )
        lines.append("")
        lines.append(
            f"load generator ceiling: {ceiling:.0f} req/s ({figures['generator_loop']}, "
            f"against a fixed-answer server); the direct node reached {direct:.0f} "
            f"({share:.0%} of it): {verdict}. Generator CPU: "
            f"{figures.get('generator_cpu_direct', 0):.0%} direct, "
            f"{figures.get('generator_cpu_cluster', 0):.0%} through the cluster."
        )
    if figures.get("cluster_cpu_us_per_request"):
        lines.append(
            f"CPU per GET /task/<uuid>/info: cluster {figures['cluster_cpu_us_per_request']:.0f}"
            f" us, node {figures['node_cpu_us_per_request']:.0f} us."
        )
    cluster_cpu = figures.get("upload_cpu_s_cluster")
    if cluster_cpu is not None and not math.isnan(cluster_cpu):
        lines.append(
            f"CPU per upload of {figures['upload_images']} images: cluster {cluster_cpu:.2f} s,"
            f" node {figures['upload_cpu_s_node']:.2f} s, upload client"
            f" {figures.get('upload_cpu_s_client', math.nan):.2f} s."
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
        "cluster_loop": "asyncio"
        if uv is None or os.environ.get("CLUSTERODM_LOOP", "").lower() == "asyncio"
        else "uvloop",
    }


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return None


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="clusterodm-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


STEPS: list[tuple[str, Callable[[Context, dict[str, Any]], None], bool]] = [
    # name, function, runs against an external --target too
    ("load generator ceiling", bench_generator, True),
    ("requests/s", bench_throughput, True),
    ("latency", bench_latency, True),
    ("all.zip download", bench_download, True),
    ("route lookup and start-up", bench_routes, False),
    ("many nodes, routes and pollers", bench_load, False),
    ("upload to RUNNING", bench_upload, True),
    ("side by side", bench_side_by_side, False),
    ("faults: kill -9 rounds", bench_faults_step, False),
]


ON_DEMAND = {"faults: kill -9 rounds"}  # minutes long: run with ``--only faults``


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    profile = QUICK if args.quick else FULL
    if args.runs:
        profile = Profile(**{**asdict(profile), "runs": args.runs})
    figures: dict[str, Any] = {}
    started = time.monotonic()
    procs: list[Proc] = []
    with _workdir() as work:
        ctx = Context(
            profile,
            work,
            token=args.token or "",
            external=bool(args.target),
            real=args.real,
            original=args.against_original,
            tool=args.loadgen,
            quick=args.quick,
        )
        proxy: Proxy | None = None
        try:
            if args.target:
                ctx.node_url, ctx.cluster_url = args.node.rstrip("/"), args.target.rstrip("/")
                ctx.uuid = asyncio.run(_make_task(ctx.cluster_url, ctx.token))
            else:
                node, ctx.node_url = start_simnode("--zip-size", str(profile.zip_size))
                procs.append(node)
                ctx.node_pid = node.pid
                ctx.uuid = asyncio.run(_make_task(ctx.node_url, set_uuid=str(uuidlib.uuid4())))
                port = _port(ctx.node_url)
                proxy = start_proxy(work, "main", [port], routes_for([ctx.uuid], [port], 10))
                ctx.proxy, ctx.cluster_url = proxy, proxy.url
                time.sleep(1.0)
                figures["rss_idle_mb"] = rss_mb(proxy.proc.pid)
            for name, step, external in STEPS:
                if args.target and not external:
                    continue
                if args.only and not any(o in name for o in args.only):
                    continue
                if name in ON_DEMAND and not args.only:
                    continue
                t0 = time.monotonic()
                print(f"-- {name} ...", file=sys.stderr, flush=True)
                step(ctx, figures)
                print(f"   {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        finally:
            if proxy is not None:
                proxy.stop()
            for proc in procs:
                proc.stop()
    table = goals(figures)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": _git_commit(),
        "mode": "quick" if args.quick else "full",
        "target": args.target or "local cluster",
        "machine": machine(),
        "profile": asdict(profile),
        "seconds": time.monotonic() - started,
        "figures": figures,
        "goals": [asdict(g) for g in table],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run (~1 minute)")
    parser.add_argument("--runs", type=int, default=0, help="runs per figure (median taken)")
    parser.add_argument("--target", metavar="URL", help="benchmark this running cluster")
    parser.add_argument("--node", metavar="URL", help="with --target: the node behind it")
    parser.add_argument("--token", default="", help="with --target: the cluster's token")
    parser.add_argument("--out", metavar="FILE", help="where to write the JSON results")
    parser.add_argument("--only", nargs="*", help="run only steps whose name holds one of these")
    parser.add_argument(
        "--real",
        action="store_true",
        help="side by side also against the real NodeODM (NODEODM_SH or ../shared/peers)",
    )
    parser.add_argument(
        "--against-original",
        action="store_true",
        help="side by side with the original ClusterODM 1.5.8 (CLUSTERODM_ORIGINAL_SH or "
        "../shared/peers/clusterodm-original.sh)",
    )
    parser.add_argument(
        "--loadgen",
        choices=("wrk", "loadgen"),
        default="",
        help="what drives the side-by-side requests/s (default: wrk when installed)",
    )
    args = parser.parse_args(argv)
    if args.only == ["splitmerge"]:  # real NodeODM nodes, a cluster of its own per kind
        from bench.splitmerge import run as run_splitmerge

        return run_splitmerge(args)
    # stopped from outside: still stop the nodes and clusters started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.target and not args.node:
        parser.error("--target needs --node: the node the cluster forwards to (the baseline)")
    result = run_suite(args)
    out = Path(args.out) if args.out else RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    m = result["machine"]
    print(
        f"ClusterODM benchmark ({result['mode']}, {result['target']}, commit {result['commit']})"
        f" on {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"{result['seconds']:.0f} s"
    )
    goals = [Goal(**g) for g in result["goals"]]
    if args.only:  # the steps left out by --only have no figures: no rows of n/a for them
        goals = [g for g in goals if g.ok is not None]
    if goals:
        print(render(result["figures"], goals))
    for key in ("side_sim", "side_real"):
        if key in result["figures"]:
            from bench.sidebyside import render_side

            print()
            print(render_side(result["figures"][key]))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
