"""What failover needs, built once from the config: the retry budget, the circuit
breakers, backoff, fallbacks, per-model hedging, which deployments can continue a broken
stream, and the incident counters (plain monotonic integers, so a Prometheus exporter can
read them as counters; circuit state per deployment is on each breaker)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.canonical import Deployment
from gateway.config import Config, Provider
from gateway.fallbacks import Fallbacks
from gateway.hedging import HedgeSettings
from policies.breakers import Breakers, BreakerSettings
from policies.retries import BackoffSettings, BudgetSettings, RetryBudget
from policies.scoreboard import Scoreboard

HealthCheck = Literal["health", "chat", "models", "off"]


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
    def __init__(self, cfg: Config, board: Scoreboard, fallbacks: Fallbacks,
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
                            br.window_s, br.cooldown_s), board.clock)
        self.hedging = {
            model: HedgeSettings(mc.hedging.quantile, mc.hedging.min_delay_ms / 1000,
                                 mc.hedging.max_delay_ms / 1000)
            for model, mc in cfg.models.items() if mc.hedging is not None}
        self.counters = FailoverCounters()
        self.rng = rng or random.Random()
        self._pools = {p.name: p.continuation for p in cfg.pools}
        self._providers = _provider_deployments(cfg)

    def can_continue(self, dep: Deployment) -> bool:
        """Pools (vLLM's continue_final_message) and the anthropic dialect (prefill) can
        continue a partial answer; other providers only when configured to."""
        if dep.pool is not None:
            return self._pools.get(dep.pool, False)
        prov = self._providers.get(dep.id)
        if prov is not None and prov.continuation is not None:
            return prov.continuation
        return dep.dialect == "anthropic"

    def health_check(self, dep: Deployment) -> HealthCheck:
        if dep.pool is not None:
            return "health"
        prov = self._providers.get(dep.id)
        return prov.health_check if prov is not None else "off"

    def snapshot(self) -> dict[str, Any]:
        return {"counters": asdict(self.counters), "retry_budget": self.budget.snapshot(),
                "circuits": self.breakers.snapshot()}


def _provider_deployments(cfg: Config) -> dict[str, Provider]:
    """Deployment id → its provider. The id is `{provider}/{upstream model}`, as
    `gateway.registry` names provider deployments."""
    providers = {p.name: p for p in cfg.providers}
    return {f"{dc.target}/{dc.model}": providers[dc.target]
            for mc in cfg.models.values() for dc in mc.deployments if dc.target in providers}
