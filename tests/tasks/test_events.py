"""A task's life in the log: each event once, in text and JSON, with the right durations.

Two tasks go to a node with one slot (the simulated node, then the real NodeODM): the first
runs at once, the second waits at the proxy for it, then runs; both complete, one is
downloaded and removed. The log is read as an operator would: by event name and uuid.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from clusterodm import log as logsetup
from clusterodm.config import DispatchSettings
from tests.conftest import ClusterFactory
from tests.e2e.test_queue_failover import new_task
from tests.helpers import eventually

RUN_S = 2.0
FAST = {
    "dispatch": DispatchSettings(backoff_base_s=0.05, backoff_max_s=0.2, queue_poll_s=0.1),
    "task_watch_s": 0.1,
}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    """Everything the cluster logs at info and above, in one format."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logsetup.make_formatter(request.param))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield request.param, out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def parse(fmt: str, text: str) -> list[dict[str, Any]]:
    """Each line as a dict: JSON as is; text as time, level, logger, msg and key=value pairs."""
    rows = []
    for line in text.splitlines():
        if fmt == "json":
            rows.append(json.loads(line))
            continue
        m = re.match(r"^(\S+) (\S+) (\S+): (.*)$", line)
        assert m, line
        row: dict[str, Any] = {"time": m[1], "level": m[2].lower(), "logger": m[3]}
        pairs = re.findall(r' (\w+)=("(?:[^"\\]|\\.)*"|\S+)', m[4])
        for key, value in pairs:
            row[key] = json.loads(value) if value.startswith('"') else value
        rows.append(row)
    return rows


def of(rows: list[dict[str, Any]], uuid: str) -> dict[str, dict[str, Any]]:
    """The task's events by name; each must appear once."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("uuid") == uuid and "event" in row:
            assert row["event"] not in seen, f"{row['event']} logged twice"
            seen[row["event"]] = row
    return seen


async def test_task_life_in_the_log(
    node_factory: Callable[..., Awaitable[Any]],
    cluster_factory: ClusterFactory,
    captured: tuple[str, io.StringIO],
) -> None:
    fmt, out = captured
    node = await node_factory(test_seconds=RUN_S, parallel=1)
    cluster = await cluster_factory([node], **FAST)
    key = f"{node.host}:{node.port}"
    async with aiohttp.ClientSession() as s:
        first = await new_task(s, cluster.url, images=2)
        second = await new_task(s, cluster.url, images=1)
        events = cluster.deps.events

        def ended() -> bool:
            return all((t := events.get(u)) is not None and t.ended for u in (first, second))

        await eventually(ended, timeout_s=60, message="both tasks completed")
        async with s.get(f"{cluster.url}/task/{second}/download/all.zip") as r:
            assert r.status == 200
            size = len(await r.read())
        async with s.post(f"{cluster.url}/task/remove", data={"uuid": second}) as r:
            assert (await r.json())["success"] is True

    rows = parse(fmt, out.getvalue())
    assert rows and all(ISO_MS.match(r["time"]) for r in rows), "ISO times, ms and zone"
    a, b = of(rows, first), of(rows, second)
    for name in ("received", "dispatched", "landed", "running", "completed"):
        assert name in a and name in b, (name, sorted(a), sorted(b))
    assert "queued" in b and "queued" not in a, "only the second waited for the slot"
    assert int(b["queued"]["place"]) == 1
    assert int(a["received"]["images"]) == 2 and int(a["received"]["bytes"]) > 0
    assert b["dispatched"]["node"] == key and int(b["dispatched"]["attempt"]) == 1
    assert a["completed"]["node"] == key
    for name in ("received", "queued", "dispatched", "running", "completed", "removed"):
        if name in b:
            assert b[name]["uuid"] == second and b[name].get("node", key) == key

    done_a, done_b = a["completed"], b["completed"]
    # the first ran about RUN_S; the second waited at the proxy for it, then ran as long
    assert RUN_S * 0.7 <= float(done_a["processing_s"]) <= RUN_S + 3
    assert float(done_a["queued_s"]) < 1.5
    assert float(done_b["queued_s"]) >= RUN_S * 0.7
    assert RUN_S * 0.7 <= float(done_b["processing_s"]) <= RUN_S + 3
    assert float(done_b["uploading_s"]) >= 0
    assert b["downloaded"]["asset"] == "all.zip" and int(b["downloaded"]["bytes"]) == size
    assert "removed" in b
    online = [r for r in rows if r.get("event") == "node_online" and r.get("node") == key]
    assert len(online) == 1, "a node coming on line is logged once"

    await node.stop()
    await cluster.deps.health.refresh_all()
    await cluster.deps.health.refresh_all()
    rows = parse(fmt, out.getvalue())
    offline = [r for r in rows if r.get("event") == "node_offline" and r.get("node") == key]
    assert len(offline) == 1 and "unreachable" in offline[0]["reason"]
