"""TaskEvents on its own, with a clock the test moves: durations, each end logged once,
failover moves, the memory bound and the sampled series."""

from __future__ import annotations

import logging

import pytest

from clusterodm.model import TaskStatus
from clusterodm.tasks.events import TaskEvents


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def events_of(caplog: pytest.LogCaptureFixture, uuid: str) -> list[dict[str, object]]:
    return [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "fields", {}).get("uuid") == uuid
    ]


def test_durations_of_each_stage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    ev = TaskEvents(clock)
    ev.received("u1", "alice", 3, 3000, "survey")
    clock.now += 5
    ev.queued("u1", 2, 3)
    ev.queued("u1", 1, 2)  # a better place is not a new event
    clock.now += 10
    ev.dispatched("u1", "n:1", 1)
    clock.now += 2
    ev.landed("u1", "n:1")
    clock.now += 1
    ev.status("u1", int(TaskStatus.RUNNING))
    ev.status("u1", int(TaskStatus.RUNNING))
    clock.now += 30
    ev.status("u1", int(TaskStatus.COMPLETED))
    ev.status("u1", int(TaskStatus.COMPLETED))
    ev.ended("u1", "removed")
    names = [f["event"] for f in events_of(caplog, "u1")]
    assert names == [
        "received",
        "queued",
        "dispatched",
        "landed",
        "running",
        "completed",
        "removed",
    ]
    done = events_of(caplog, "u1")[5]
    assert done["queued_s"] == 15 and done["uploading_s"] == 2 and done["processing_s"] == 30
    assert done["user"] == "alice" and done["node"] == "n:1"
    assert ev.series.finished == 1, "counted once for the charts"


def test_failover_move_and_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    ev = TaskEvents(clock)
    ev.received("u2", "", 1, 10, None)
    ev.dispatched("u2", "a:1", 1)
    ev.landed("u2", "a:1")
    clock.now += 4
    ev.moved("u2", "a:1", "Node a:1 went offline", 1)
    assert ev.unfinished() == [], "not polled while it moves"
    ev.dispatched("u2", "b:1", 2)
    ev.landed("u2", "b:1")
    clock.now += 3
    ev.ended("u2", "failed", "out of memory")
    rows = events_of(caplog, "u2")
    moved = next(r for r in rows if r["event"] == "moved")
    assert moved["move"] == 1 and moved["reason"] == "Node a:1 went offline"
    failed = rows[-1]
    assert failed["event"] == "failed" and failed["error"] == "out of memory"
    assert failed["node"] == "b:1" and failed["processing_s"] == 3
    assert [r["event"] for r in rows].count("dispatched") == 2


def test_memory_is_bounded_oldest_ended_first() -> None:
    ev = TaskEvents(Clock(), max_tracked=3)
    for i in range(3):
        ev.received(f"t{i}", "", 1, 1, None)
    ev.ended("t1", "cancelled")
    ev.received("t3", "", 1, 1, None)
    assert set(ev.tasks) == {"t0", "t2", "t3"}


def test_series_counts_since_the_last_sample() -> None:
    ev = TaskEvents(Clock())
    ev.series.sample(0.0, queue=0, running=0, bytes_in=100.0, bytes_out=0.0)
    ev.received("x", "", 1, 1, None)
    ev.ended("x", "cancelled")
    ev.series.sample(60.0, queue=2, running=1, bytes_in=400.0, bytes_out=50.0)
    first, second = ev.series.json()["points"]
    assert first["bytesIn"] == 0 and first["finished"] == 0
    assert second == {
        "t": 60.0,
        "queue": 2,
        "running": 1,
        "finished": 1,
        "bytesIn": 300.0,
        "bytesOut": 50.0,
    }
