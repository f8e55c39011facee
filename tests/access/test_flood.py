"""FloodMonitor rules, with an injected clock."""

from __future__ import annotations

from clusterodm.access.flood import FORGIVE_EVERY_S, FloodMonitor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_disabled_never_floods() -> None:
    f = FloodMonitor(None)
    assert not any(f.record_init("t") for _ in range(1000))


def test_trips_above_limit_and_commits_pay_back() -> None:
    f = FloodMonitor(3, Clock())
    assert [f.record_init("a") for _ in range(4)] == [False, False, False, True]
    assert not f.record_init("b"), "tokens are counted apart"
    f.record_commit("a")
    f.record_commit("a")
    assert f.count("a") == 2
    assert not f.record_init("a")


def test_forgiven_by_a_third_every_15_minutes() -> None:
    clock = Clock()
    f = FloodMonitor(5, clock)
    for _ in range(10):
        f.record_init("a")
    assert f.record_init("a")  # 11 > 5
    clock.now += FORGIVE_EVERY_S
    assert f.count("a") == 7  # floor(11 * 0.66)
    clock.now += 3 * FORGIVE_EVERY_S
    assert f.count("a") == 1  # 7 -> 4 -> 2 -> 1
    clock.now += FORGIVE_EVERY_S
    assert f.count("a") == 0  # forgotten
    assert not f.record_init("a")
