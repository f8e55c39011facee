"""Counting a user's running tasks: held by the proxy or reported by their node."""

from __future__ import annotations

import asyncio

import pytest

from clusterodm.errors import LimitExceeded, NodeUnreachable
from clusterodm.model import Route, TaskEntry, TaskStage, TaskStatus
from clusterodm.tasks.concurrency import ConcurrencyGate, count_active, limit_message


def entry(uuid: str, owner: str, status: TaskStatus) -> TaskEntry:
    return TaskEntry(uuid, owner, TaskStage.COMMITTED, status, None, 0, {}, [])


async def test_counts_held_tasks_and_routes_running_on_nodes() -> None:
    tasks = [
        entry("t1", "alice", TaskStatus.RUNNING),
        entry("t2", "alice", TaskStatus.COMPLETED),
        entry("t3", "bob", TaskStatus.RUNNING),
    ]
    routes = [Route("r1", "n", "alice"), Route("r2", "n", "alice"), Route("r3", "n", "bob")]
    routes += [Route("gone", "n", "alice"), Route("t1", "n", "alice")]
    codes = {"r1": 20, "r2": 40, "r3": 10, "t1": 20}
    asked: list[str] = []

    async def status_of(route: Route) -> int | None:
        asked.append(route.uuid)
        if route.uuid == "gone":
            raise NodeUnreachable("down")
        return codes.get(route.uuid)

    assert await count_active("alice", tasks, routes, status_of) == 2  # t1 (held) + r1
    assert "t1" not in asked, "a held task is not counted twice"


async def test_a_node_that_does_not_answer_counts_as_running() -> None:
    async def status_of(route: Route) -> int | None:
        await asyncio.Event().wait()
        return None

    routes = [Route("r1", "n", "alice")]
    assert await count_active("alice", [], routes, status_of, timeout_s=0.05) == 1


async def test_gate_refuses_at_the_limit_with_the_original_message() -> None:
    tasks = [entry("t1", "alice", TaskStatus.QUEUED)]

    async def status_of(route: Route) -> int | None:
        return None

    gate = ConcurrencyGate(lambda: tasks, lambda: [], status_of)
    await gate.check("alice", None)
    await gate.check("alice", 2)
    with pytest.raises(LimitExceeded) as e:
        await gate.check("alice", 1)
    assert e.value.message == limit_message(1)
    assert e.value.message.startswith("Reached maximum number of concurrent tasks: 1. Please wait")
    with pytest.raises(LimitExceeded):
        await gate.check("bob", 0)
