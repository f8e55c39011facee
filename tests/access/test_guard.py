"""FailedTokenGuard rules, with an injected clock."""

from __future__ import annotations

import pytest

from clusterodm.access.guard import FailedTokenGuard, TooManyFailures


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_refuses_after_limit_until_window_passes() -> None:
    clock = Clock()
    g = FailedTokenGuard(3, 60.0, clock)
    for _ in range(3):
        g.check("1.2.3.4")
        g.failed("1.2.3.4")
        clock.now += 1
    with pytest.raises(TooManyFailures) as e:
        g.check("1.2.3.4")
    assert e.value.status == 429
    assert e.value.retry_after_s == 57  # oldest failure at 100, window 60, now 103
    clock.now = 160.0  # the first failure leaves the window
    g.check("1.2.3.4")
    assert g.failures("1.2.3.4") == 2
    g.failed("1.2.3.4")
    with pytest.raises(TooManyFailures):
        g.check("1.2.3.4")


def test_addresses_are_counted_apart() -> None:
    g = FailedTokenGuard(2, 60.0, Clock())
    g.failed("a")
    g.failed("a")
    with pytest.raises(TooManyFailures):
        g.check("a")
    g.check("b")
    assert g.failures("b") == 0


def test_forgets_addresses_whose_failures_expired() -> None:
    clock = Clock()
    g = FailedTokenGuard(5, 10.0, clock)
    g.failed("a")
    clock.now += 10
    assert g.failures("a") == 0
    assert "a" not in g._failures
