"""Scale-out benchmark: task-info throughput through 1, 2 and 3 instances on one Redis, and the
Redis commands each proxied request costs.

    python -m bench.bench_scale_out [--seconds 5] [--concurrency 48] [--out FILE]

Starts a redis-server (no persistence), one simulated node and three proxy processes sharing the
store (``--store``) and the staging folder, makes a few finished tasks, then:

- throughput: ``/task/<uuid>/info`` of finished tasks (routes: forwarded to the node) from one
  load generator per instance in use, all at once, ``concurrency`` connections in all, spread
  evenly (what a load balancer in front of the instances does); requests/s summed;
- Redis commands: ``INFO commandstats`` before and after a fixed number of requests to one
  instance, minus what the instances send on their own in the same time (leader lease, scans),
  measured idle just after; for a routed task (answered from memory once its route is read),
  and for a task the proxy holds (read from the store on every request: another instance may be
  changing it).

The processes share the machine's cores with the load generators, redis-server and the node, so
on a small machine the instances compete for CPU: compare the ratios with the core count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid as uuidlib
from pathlib import Path
from typing import Any

import redis

from bench.run import REPO, Proc, _env, _make_task, _python, get_load, start_simnode
from clusterodm.model import Node, TaskEntry, TaskStage, TaskStatus
from clusterodm.store.redis import RedisStore

INSTANCES = 3
TASKS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    proc = subprocess.Popen([*args, "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis_client(port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not answer PING")


def redis_client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def commands(port: int) -> int:
    """Commands Redis has run, all kinds but INFO (our own reads of this figure)."""
    stats = redis_client(port).info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def _prepare(url: str, node_port: int, held: str) -> None:
    store = RedisStore(url)
    await store.open()
    try:
        await store.put_node(Node("127.0.0.1", node_port))
        entry = TaskEntry(held, "", TaskStage.FAILED, TaskStatus.FAILED, "held", 0, {}, [])
        await store.put_task(entry)
    finally:
        await store.close()


def start_instance(store_url: str, data_dir: Path, n: int) -> tuple[Proc, str]:
    argv = _python("-m", "clusterodm", "--port", "0", "--bind", "127.0.0.1")
    argv += ["--admin-cli-port", "0", "--admin-web-port", "0", "--data-dir", str(data_dir)]
    proc = Proc([*argv, "--store", store_url], f"instance {n}")
    line = proc.wait_for(lambda s: "listening on port" in s)
    url = f"http://127.0.0.1:{line.split()[-1]}"
    with urllib.request.urlopen(f"{url}/info", timeout=5) as response:
        assert response.status == 200
    return proc, url


def spread_load(urls_per_instance: list[list[str]], concurrency: int, seconds: float) -> Any:
    """One load generator per instance, all at once; answers summed."""
    each = max(1, concurrency // len(urls_per_instance))
    procs = []
    for urls in urls_per_instance:
        args = ["get", *urls, "--concurrency", str(each), "--seconds", str(seconds)]
        procs.append(
            subprocess.Popen(
                _python("-m", "bench.loadgen", *args),
                cwd=REPO,
                env=_env(),
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    results = [json.loads(p.communicate()[0]) for p in procs]
    return {
        "requests_per_s": sum(r["requests_per_s"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
    }


def commands_per_request(port: int, url: str, requests: int) -> float:
    """Redis commands per request to ``url``, net of the instances' own background commands."""
    before = commands(port)
    started = time.monotonic()
    result = get_load([url], 8, requests=requests)
    elapsed = time.monotonic() - started
    during = commands(port) - before
    idle_before = commands(port)
    time.sleep(elapsed)
    idle = commands(port) - idle_before
    if result["errors"]:
        raise RuntimeError(f"errors while counting Redis commands: {result['error_samples']}")
    return max(0, during - idle) / max(1, result["requests"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--requests", type=int, default=3000, help="for the round-trip count")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    port = free_port()
    redis = start_redis(port)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    store_url = f"redis://127.0.0.1:{port}/0"
    procs: list[Proc] = []
    try:
        node, node_url = start_simnode("-q", "64")
        procs.append(node)
        held = str(uuidlib.uuid4())
        asyncio.run(_prepare(store_url, int(node_url.rsplit(":", 1)[1]), held))
        urls = []
        for n in range(INSTANCES):
            proc, url = start_instance(store_url, work / "shared", n)
            procs.append(proc)
            urls.append(url)
        uuids = [asyncio.run(_make_task(urls[i % INSTANCES])) for i in range(TASKS)]
        info = [[f"{u}/task/{t}/info" for t in uuids] for u in urls]
        get_load([x for row in info for x in row], 4, requests=200)  # every route read once

        figures: dict[str, Any] = {"cpu_count": os.cpu_count(), "concurrency": args.concurrency}
        for n in range(1, INSTANCES + 1):
            result = spread_load(info[:n], args.concurrency, args.seconds)
            figures[f"info_rps_{n}_instances"] = round(result["requests_per_s"])
            figures[f"info_p99_ms_{n}_instances"] = round(result["p99_ms"], 2)
            figures[f"info_errors_{n}_instances"] = result["errors"]
        for n in (2, 3):
            base = figures["info_rps_1_instances"]
            ratio = figures[f"info_rps_{n}_instances"] / base
            figures[f"info_rps_ratio_{n}_to_1"] = round(ratio, 2)
        routed = f"{urls[1]}/task/{uuids[0]}/info"
        # a MULTI/EXEC block is one round trip but counts as its commands plus two
        per = commands_per_request(port, routed, args.requests)
        figures["redis_commands_per_routed_info"] = round(per, 3)
        per = commands_per_request(port, f"{urls[2]}/task/{held}/info", args.requests)
        figures["redis_commands_per_held_info"] = round(per, 3)
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
