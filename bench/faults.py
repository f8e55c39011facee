"""``python -m bench --only faults``: the proxy killed with SIGKILL at many random moments.

The longer version of ``tests/e2e/test_faults_crash.py`` (same rounds, ``tests/faultkit.py``):
for each set-up (early forwarding on and off, one and two nodes, the simulated node and, when
``NODEODM_SH`` points at ``nodeodm.sh``, the real NodeODM) it runs seeded rounds of one task
and one kill each, and checks from the nodes' own folders that the node running the task holds
exactly the images the client uploaded and that no other node holds anything of it. Prints
kills tried, tasks checked, images compared and mismatches (the goal: 0). ``FAULT_SEED`` and
``FAULT_ROUNDS`` change the seed and the rounds per set-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from clusterodm.simnode import SimNodeConfig, start_simnode
from tests.faultkit import Proxy, Tally, run_rounds


async def _setup(kind: str, early: bool, count: int, seed: int, rounds: int, tally: Tally) -> None:
    nodes: list[Any] = []
    try:
        for _ in range(count):
            if kind == "sim":
                nodes.append(await start_simnode(SimNodeConfig(test_seconds=0.2)))
            else:
                from tests.realnode import start_real_node

                nodes.append(await start_real_node(test_seconds=1))
        with tempfile.TemporaryDirectory(prefix="clusterodm-faults-") as work:
            data = Path(work) / "data"
            data.mkdir()
            entries = [{"hostname": n.host, "port": str(n.port), "token": ""} for n in nodes]
            (data / "nodes.json").write_text(json.dumps(entries))
            proxy = Proxy(data, *([] if early else ["--no-early-forwarding"]))
            await proxy.start()
            try:
                part = await run_rounds(proxy, nodes, seed, rounds)
            finally:
                await proxy.stop()
    finally:
        for node in nodes:
            await node.stop()
    tally.kills += part.kills
    tally.tasks += part.tasks
    tally.images += part.images
    tally.mismatches += part.mismatches
    tally.retried_copies += part.retried_copies
    tally.problems += part.problems
    tally.info_worst_s = max(tally.info_worst_s, part.info_worst_s)
    name = f"{kind}, {'early forwarding' if early else 'staged'}, {count} node(s)"
    print(f"   {name}: {part.line()}", file=sys.stderr, flush=True)


async def run(rounds: int, seed: int, kinds: list[str]) -> Tally:
    tally = Tally()
    n = 0
    for kind in kinds:
        for early in (True, False):
            for count in (1, 2):
                n += 1
                await _setup(kind, early, count, seed * 1000 + n, rounds, tally)
    return tally


def bench_faults(rounds: int) -> dict[str, Any]:
    rounds = int(os.environ.get("FAULT_ROUNDS", str(rounds)))
    seed = int(os.environ.get("FAULT_SEED", "16"))
    # a simulated node's request cut off by the kill is logged with a traceback: not news here
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    kinds = ["sim"]
    if os.path.isfile(os.environ.get("NODEODM_SH", "")):
        kinds.append("real")
    else:
        print("   NODEODM_SH not set: simulated node only", file=sys.stderr)
    tally = asyncio.run(run(rounds, seed, kinds))
    print(tally.line(), flush=True)
    for problem in tally.problems[:20]:
        print("   " + problem, file=sys.stderr)
    return {
        "faults_kills": tally.kills,
        "faults_tasks": tally.tasks,
        "faults_images": tally.images,
        "faults_mismatches": tally.mismatches,
        "faults_retried_copies": tally.retried_copies,
        "faults_seed": seed,
        "faults_info_worst_s": round(tally.info_worst_s, 3),
    }
