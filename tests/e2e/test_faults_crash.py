"""The proxy killed with SIGKILL at random moments: every node holds exactly what it should.

Each case runs a few seeded rounds of ``tests/faultkit.py`` (one task, one kill each) with and
without early forwarding, with one and two nodes, against the simulated and the real NodeODM,
and checks the invariant from the nodes' own folders: the node that runs the task holds
exactly the images the client uploaded (names, sha256, count), the others nothing.
``FAULT_SEED`` replays a run; ``python -m bench --only faults`` is the longer version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faultkit import Proxy, run_rounds

ROUNDS = 2  # kills per case: 16 in all, about a minute and a half on two workers
SEED = int(os.environ.get("FAULT_SEED", "16"))


def write_nodes_json(data_dir: Path, nodes: list[Any]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    entries = [{"hostname": n.host, "port": str(n.port), "token": ""} for n in nodes]
    (data_dir / "nodes.json").write_text(json.dumps(entries))


@pytest.mark.parametrize("early", [True, False], ids=["early", "staged"])
@pytest.mark.parametrize("count", [1, 2], ids=["one-node", "two-nodes"])
async def test_kill_anywhere_keeps_exactly_the_images(
    node_factory: Callable[..., Awaitable[Any]], tmp_path: Path, early: bool, count: int
) -> None:
    nodes = [await node_factory(test_seconds=1) for _ in range(count)]
    if nodes[0].kind == "sim":
        for node in nodes:
            node.config.test_seconds = 0.2
    write_nodes_json(tmp_path / "data", nodes)
    flags = [] if early else ["--no-early-forwarding"]
    proxy = Proxy(tmp_path / "data", *flags)
    await proxy.start()
    try:
        seed = SEED * 100 + count * 10 + int(early) + (5 if nodes[0].kind == "real" else 0)
        tally = await run_rounds(proxy, nodes, seed, ROUNDS)
    finally:
        await proxy.stop()
    assert tally.kills == ROUNDS
    assert tally.tasks == ROUNDS + 1
    assert tally.mismatches == 0, "\n".join(tally.problems)
    assert tally.info_worst_s < 1.0, f"/info took {tally.info_worst_s:.2f} s after a restart"
