"""Retry budget and backoff, on a driven clock and a seeded RNG: exact counts."""

from __future__ import annotations

import random

from policies.retries import (
    BackoffSettings,
    BudgetSettings,
    RetryBudget,
    full_jitter,
    wait_before,
)


def test_budget_allows_exactly_the_ratio_of_requests() -> None:
    clock = [0.0]
    budget = RetryBudget(BudgetSettings(ratio=0.2, min_per_s=0.0, window_s=10.0),
                         lambda: clock[0])
    granted = 0
    for i in range(50):  # every request fails and wants a retry
        clock[0] = i * 0.01
        budget.request()
        granted += budget.try_retry()
    assert granted == 10  # 20 % of 50, never more
    assert (budget.retries_total, budget.refused_total, budget.requests_total) == (10, 40, 50)


def test_budget_floor_allows_retries_without_traffic() -> None:
    budget = RetryBudget(BudgetSettings(ratio=0.0, min_per_s=0.5, window_s=10.0), lambda: 0.0)
    assert sum(budget.try_retry() for _ in range(9)) == 5  # 0.5/s over 10 s


def test_budget_window_forgets_old_requests_and_retries() -> None:
    clock = [0.0]
    budget = RetryBudget(BudgetSettings(ratio=0.5, min_per_s=0.0, window_s=10.0),
                         lambda: clock[0])
    for _ in range(4):
        budget.request()
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]
    clock[0] = 10.5  # the requests (and retries) of second 0 left the window
    assert not budget.try_retry()
    budget.request()
    budget.request()
    assert [budget.try_retry() for _ in range(2)] == [True, False]
    assert budget.snapshot()["window_requests"] == 2


def test_full_jitter_stays_within_the_exponential_envelope() -> None:
    settings = BackoffSettings(base_s=0.1, max_s=1.0, max_retry_after_s=5.0)
    rng = random.Random(7)
    for retry, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        draws = [full_jitter(retry, settings, rng) for _ in range(200)]
        assert min(draws) >= 0.0 and max(draws) <= cap
        assert max(draws) > cap * 0.9  # spread over the whole range, not bunched


def test_retry_after_is_a_floor_and_a_long_one_is_not_waited() -> None:
    settings = BackoffSettings(base_s=0.1, max_s=1.0, max_retry_after_s=5.0)
    rng = random.Random(1)
    assert wait_before(0, 3.0, settings, rng) == 3.0
    assert wait_before(0, 6.0, settings, rng) is None
    assert 0.0 <= (wait_before(2, None, settings, rng) or 0.0) <= 0.4
