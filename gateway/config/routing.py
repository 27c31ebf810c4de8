"""The `routing` and `failover` sections (and a model's `hedging`): how a request's
deployment is chosen, and what happens when it fails."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.config.base import Strict

PolicyName = Literal["slo-cost", "kv-aware", "latency", "least-loaded", "prefix-affinity",
                     "weighted", "round-robin"]


class RoutingConfig(Strict):
    policy: PolicyName = "slo-cost"
    within_pool: Literal["least-loaded", "prefix-affinity", "kv-aware"] = "least-loaded"
    slo_ttft_ms: float | None = Field(None, gt=0, description="default TTFT SLO")
    # Load shedding: when no deployment is predicted to meet the SLO and the best one's
    # predicted TTFT exceeds this, requests below `shed_below_priority` get 429.
    shed_wait_ms: float | None = Field(None, gt=0)
    shed_below_priority: int = 1


class HedgingConfig(Strict):
    """TTFT hedging: a second deployment is asked when the first token is late."""

    quantile: float = Field(0.95, gt=0, lt=1, description="of the candidates' live TTFT")
    min_delay_ms: float = Field(50.0, ge=0)
    max_delay_ms: float = Field(2000.0, gt=0, description="also the delay before any data")


class RetryBudgetConfig(Strict):
    ratio: float = Field(0.2, ge=0, le=10, description="retries per request over the window")
    min_per_s: float = Field(10.0, ge=0, description="retries always allowed, per second")
    window_s: float = Field(10.0, gt=0)


class BackoffConfig(Strict):
    base_ms: float = Field(100.0, ge=0)
    max_ms: float = Field(2000.0, ge=0)
    max_retry_after_s: float = Field(10.0, ge=0, description="longer Retry-After: not waited")


class BreakerConfig(Strict):
    consecutive_failures: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    min_requests: int = Field(10, ge=1, description="in the window, before the rate counts")
    window_s: float = Field(10.0, gt=0)
    cooldown_s: float = Field(5.0, gt=0, description="open, before a half-open probe")
    health_check_interval_s: float = Field(1.0, gt=0, description="while a circuit is open")
    health_check_timeout_s: float = Field(2.0, gt=0)


class FailoverConfig(Strict):
    enabled: bool = Field(True, description="false: one attempt on the first candidate")
    max_attempts: int = Field(3, ge=1, description="upstream attempts per request, in all")
    # Passes over the candidates (and fallbacks); each pass after the first waits a backoff
    # (at least the upstream's Retry-After). 1: every deployment at most once per request.
    rounds: int = Field(1, ge=1)
    continuation: bool = Field(True, description="continue broken streams elsewhere")
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()  # type: ignore[call-arg]
    backoff: BackoffConfig = BackoffConfig()  # type: ignore[call-arg]
    breaker: BreakerConfig = BreakerConfig()  # type: ignore[call-arg]
