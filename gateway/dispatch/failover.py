"""What failover needs, built once from the config: the retry budget, the circuit
breakers, backoff, fallbacks, per-model hedging, and the incident counters (plain
monotonic integers, so a Prometheus exporter can read them as counters; circuit state per
deployment is on each breaker)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.config import Config
from gateway.dispatch.fallbacks import Fallbacks
from gateway.dispatch.hedging import HedgeSettings
from policies.breakers import Breaker, Breakers, BreakerSettings
from policies.retries import BackoffSettings, BudgetSettings, RetryBudget
from policies.scoreboard import Scoreboard


@dataclass(slots=True)
class FailoverCounters:
    failovers_total: int = 0  # attempts made after a failed one
    fallbacks_total: int = 0  # moves to a fallback model (context-window ones included)
    least_bad_total: int = 0  # every circuit open: the least-bad deployment tried anyway
    hedges_total: int = 0  # hedge requests sent
    hedge_wins_total: int = 0  # ... that answered first
    continuations_total: int = 0  # broken streams resumed on another deployment
    continuation_failures_total: int = 0  # broken streams that could not be


class Failover:
    def __init__(self, cfg: Config, board: Scoreboard, fallbacks: Fallbacks, *,
                 on_open: Callable[[Breaker], None] | None = None,
                 rng: random.Random | None = None) -> None:
        fc = cfg.failover
        self.board = board
        self.clock = board.clock
        self.fallbacks = fallbacks
        self.max_attempts = fc.max_attempts
        self.rounds = fc.rounds
        self.continuation = fc.continuation
        rb, bo, br = fc.retry_budget, fc.backoff, fc.breaker
        self.budget = RetryBudget(BudgetSettings(rb.ratio, rb.min_per_s, rb.window_s),
                                  board.clock)
        self.backoff = BackoffSettings(bo.base_ms / 1000, bo.max_ms / 1000,
                                       bo.max_retry_after_s)
        self.breakers = Breakers(
            BreakerSettings(br.consecutive_failures, br.failure_rate, br.min_requests,
                            br.window_s, br.cooldown_s), board.clock, on_open)
        self.hedging = {
            model: HedgeSettings(mc.hedging.quantile, mc.hedging.min_delay_ms / 1000,
                                 mc.hedging.max_delay_ms / 1000)
            for model, mc in cfg.models.items() if mc.hedging is not None}
        self.counters = FailoverCounters()
        self.rng = rng or random.Random()

    def snapshot(self) -> dict[str, Any]:
        return {"counters": asdict(self.counters), "retry_budget": self.budget.snapshot(),
                "circuits": self.breakers.snapshot()}
