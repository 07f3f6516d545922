"""The circuit breaker's state machine, and the retry budget, on a clock the test moves."""

from __future__ import annotations

import random

import pytest

from edgeinfer.offload.breaker import BreakerConfig, BreakerState, CircuitBreaker
from edgeinfer.offload.retry import RetryBudget, full_jitter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(failures=3, open_s=1.0, max_open_s=4.0), clock=clock)


def test_opens_after_consecutive_failures_only() -> None:
    b = make(Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()  # the streak is broken
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.closed
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.closed
    assert b.opened == 1


def test_half_open_after_the_open_time_with_one_trial() -> None:
    clock = Clock()
    b = make(clock)
    for _ in range(3):
        b.record_failure()
    assert not b.allow_trial()
    assert b.retry_in() == pytest.approx(1.0)
    clock.now = 1.0
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow_trial()
    assert not b.allow_trial()  # one trial at a time
    b.record_success(trial=True)
    assert b.state is BreakerState.CLOSED


def test_failed_trials_double_the_open_time_up_to_the_cap() -> None:
    clock = Clock()
    b = make(clock)
    for _ in range(3):
        b.record_failure()
    waits = []
    for _ in range(4):
        clock.now += b.retry_in()
        assert b.allow_trial()
        b.record_failure()
        waits.append(b.retry_in())
    assert waits == [2.0, 4.0, 4.0, 4.0]


def test_closed_by_a_probe_it_stays_wary_until_a_real_success() -> None:
    clock = Clock()
    b = make(clock)
    for _ in range(3):
        b.record_failure()
    clock.now = 1.0
    assert b.allow_trial()
    b.record_success(trial=True)  # the server answers probes...
    b.record_failure()  # ...but fails real work: open again at once, for longer
    assert b.state is BreakerState.OPEN
    assert b.retry_in() == pytest.approx(2.0)
    clock.now += 2.0
    assert b.allow_trial()
    b.record_success(trial=True)
    b.record_success()  # a real call worked: fully closed, open time reset
    for _ in range(2):
        b.record_failure()
    assert b.closed


def test_retry_budget_caps_retries_at_the_ratio_plus_reserve() -> None:
    budget = RetryBudget(ratio=0.1, reserve=2.0)
    allowed = 0
    for _ in range(1000):
        budget.deposit()
        if budget.withdraw():  # every request fails and wants a retry
            allowed += 1
    assert allowed <= 0.1 * 1000 + 2
    assert allowed >= 0.1 * 1000 - 1
    assert budget.denied == 1000 - allowed


def test_retry_budget_with_no_reserve_allows_nothing_at_first() -> None:
    budget = RetryBudget(ratio=0.1, reserve=0.0)
    budget.deposit()
    assert not budget.withdraw()


def test_full_jitter_stays_under_the_growing_cap() -> None:
    rng = random.Random(0)
    for attempt, cap in [(1, 0.01), (2, 0.02), (3, 0.04), (10, 0.25)]:
        waits = [full_jitter(attempt, 0.01, 0.25, rng) for _ in range(200)]
        assert all(0.0 <= w <= cap for w in waits)
        assert max(waits) > cap / 2  # spread over the whole range
