"""Planning, the routing step of the pipeline: the model's policy (`policies/routing/`)
orders its deployments into a `Plan`, with the request's SLO and priority, health
filtering, load shedding and the decision log around it.

The SLO is the request's `x-turnout-slo-ttft-ms`, else the team's, else the model's
routing config, else none. Priority is the team's; `x-turnout-priority` may lower it,
never raise it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.canonical import CanonicalRequest, Deployment
from gateway.config import Config
from gateway.config.routing import RoutingConfig
from gateway.errors import GatewayError
from policies.kv_index import KvView
from policies.routing import Plan, RouteHints, RoutingPolicy, make_policy
from policies.scoreboard import Scoreboard

log = logging.getLogger("turnout.routing")


class PlanStage(Protocol):
    """What the pipeline and fallbacks ask of planning (`Planner`, or it traced)."""

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment], hints: RouteHints,
             *, team_slo_ms: float | None = None, team_priority: int = 0,
             shed: bool = True) -> Plan: ...


class Planner:
    def __init__(self, cfg: Config, board: Scoreboard, kv: KvView | None = None,
                 adapters: Callable[[Deployment], bool] | None = None) -> None:
        """`kv`: what the pools' KV events say, for the kv-aware step (None: no pool
        publishes them); `adapters`: whether a LoRA adapter's replica has it loaded."""
        self.board = board
        self._has_adapter = adapters
        self._routes: dict[str, tuple[RoutingPolicy, RoutingConfig]] = {}
        for model, mc in cfg.models.items():
            rc = mc.routing or cfg.routing
            self._routes[model] = (make_policy(rc.policy, board, rc.within_pool, kv), rc)

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment], hints: RouteHints,
             *, team_slo_ms: float | None = None, team_priority: int = 0,
             shed: bool = True) -> Plan:
        """`shed=False` for a fallback's plan: a request already in failover is not shed."""
        policy, rc = self._routes[req.model]
        deployments = self._with_adapter(deployments)
        slo_ms = req.slo_ttft_ms or team_slo_ms or rc.slo_ttft_ms
        hints.slo_ttft_s = slo_ms / 1000 if slo_ms else None
        # Replicas whose /health fails, and deployments stalled on an attempt (latency
        # outliers: see policies/scoreboard.py), go last: not away, if all are, still try.
        now = self.board.clock()
        healthy = [d for d in deployments if (s := self.board.stats(d)).pool.healthy
                   is not False and not s.stalled(now)]
        plan = policy.plan(req, healthy or deployments, hints)
        if healthy and len(healthy) < len(deployments):
            plan.candidates += [d for d in deployments if d not in healthy]
            plan.reason += f"; {len(deployments) - len(healthy)} unhealthy or stalled skipped"
        if log.isEnabledFor(logging.DEBUG):
            log.debug("route %s model=%s policy=%s choice=%s reason=%s scores=%s",
                      req.request_id, req.model, plan.policy, plan.candidates[0].id,
                      plan.reason, plan.scores)
        priority = team_priority if req.priority is None else min(req.priority, team_priority)
        if shed:
            self._shed(plan, rc, priority)
        return plan

    def _with_adapter(self, deployments: Sequence[Deployment]) -> Sequence[Deployment]:
        """A LoRA adapter's replicas that have it loaded; 503 when none has."""
        has = self._has_adapter
        if has is None or not any(d.adapter_path is not None for d in deployments):
            return deployments
        ready = [d for d in deployments if d.adapter_path is None or has(d)]
        if not ready:
            raise GatewayError(
                503, f"The adapter `{deployments[0].target.upstream_model}` is not loaded on"
                     " any replica of its pool.", type="server_error", code="adapter_unavailable",
                headers={"retry-after": "5"})
        return ready

    @staticmethod
    def _shed(plan: Plan, rc: RoutingConfig, priority: int) -> None:
        """Low-priority requests wait elsewhere when nothing can meet the SLO anyway."""
        predicted = plan.predicted_ttft_s
        if (plan.meets_slo or rc.shed_wait_ms is None or predicted is None
                or predicted * 1000 <= rc.shed_wait_ms or priority >= rc.shed_below_priority):
            return
        retry = 1 if math.isinf(predicted) else max(1, math.ceil(predicted))
        raise GatewayError(
            429, f"overloaded: no deployment can meet the latency target (predicted time to "
                 f"first token {'unknown' if math.isinf(predicted) else f'{predicted:.1f}s'});"
                 f" requests of priority {priority} are shed, retry later",
            type="rate_limit_error", code="overloaded", headers={"retry-after": str(retry)})


def apply_request_headers(req: CanonicalRequest, slo_ttft_ms: bytes | None,
                          priority: bytes | None) -> None:
    """`x-turnout-slo-ttft-ms` and `x-turnout-priority`, validated (400 when malformed)."""
    if slo_ttft_ms is not None:
        try:
            req.slo_ttft_ms = float(slo_ttft_ms)
        except ValueError:
            req.slo_ttft_ms = -1.0
        if not 0 < req.slo_ttft_ms < math.inf:
            raise GatewayError(400, "x-turnout-slo-ttft-ms must be a positive number of ms",
                               param="x-turnout-slo-ttft-ms")
    if priority is not None:
        try:
            req.priority = int(priority)
        except ValueError:
            raise GatewayError(400, "x-turnout-priority must be an integer",
                               param="x-turnout-priority") from None
