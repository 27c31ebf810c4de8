"""Retry rules: a retry budget that keeps an outage from multiplying load, and backoff.

Budget (Finagle's RetryBudget, with a sliding window instead of expiring tokens): over
the last `window_s`, retries may be at most `ratio` of the requests plus a floor of
`min_per_s` per second, so a quiet service can still retry a lone failure. Every extra
upstream attempt counts as a retry: failover to another deployment, a hedge, a
mid-stream continuation. When every deployment fails, upstream attempts therefore stay
at about `requests x (1 + ratio)` instead of `requests x max_attempts`.

Backoff is "full jitter" (AWS architecture blog, "Exponential Backoff and Jitter"): a
uniform draw in [0, min(cap, base x 2^n)], which spreads a burst of retries out better
than equal or decorrelated jitter for the same mean wait. A `Retry-After` the upstream
sent is a floor on the wait; one longer than `max_retry_after_s` is not waited for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from policies.window import SlidingCounts

_REQUESTS, _RETRIES = 0, 1
_EPSILON = 1e-9  # 0.2 x 15 is 3.0000000000000004 in floating point


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    ratio: float = 0.2
    min_per_s: float = 10.0
    window_s: float = 10.0


class RetryBudget:
    """Process-wide (per gateway worker): an outage hits every model alike, and one
    budget is what bounds the extra load the whole process sends upstream."""

    __slots__ = ("_window", "clock", "refused_total", "requests_total", "retries_total",
                 "settings")

    def __init__(self, settings: BudgetSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self._window = SlidingCounts(settings.window_s)
        self.requests_total = 0
        self.retries_total = 0
        self.refused_total = 0

    def request(self) -> None:
        """A request's first attempt: deposits `ratio` of a retry."""
        self.requests_total += 1
        self._window.add(self.clock(), _REQUESTS)

    def try_retry(self) -> bool:
        """Withdraw one retry if the budget allows it (False: do not send it)."""
        now = self.clock()
        requests, retries = self._window.totals(now)
        s = self.settings
        if retries + 1 > s.min_per_s * s.window_s + s.ratio * requests + _EPSILON:
            self.refused_total += 1
            return False
        self.retries_total += 1
        self._window.add(now, _RETRIES)
        return True

    def snapshot(self) -> dict[str, float]:
        requests, retries = self._window.totals(self.clock())
        return {"window_requests": requests, "window_retries": retries,
                "requests_total": self.requests_total, "retries_total": self.retries_total,
                "refused_total": self.refused_total}


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    base_s: float = 0.1
    max_s: float = 2.0
    max_retry_after_s: float = 10.0


def full_jitter(retry: int, settings: BackoffSettings, rng: random.Random) -> float:
    """Seconds to wait before retry number `retry` (0 for the first) of one deployment."""
    return rng.uniform(0.0, min(settings.max_s, settings.base_s * (2.0 ** retry)))


def wait_before(retry: int, retry_after: float | None, settings: BackoffSettings,
                rng: random.Random) -> float | None:
    """The backoff, at least the upstream's `Retry-After`; None when that is too long to
    wait for (the caller moves on, or gives the client the upstream's answer)."""
    if retry_after is not None and retry_after > settings.max_retry_after_s:
        return None
    return max(full_jitter(retry, settings, rng), retry_after or 0.0)
