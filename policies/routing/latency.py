"""Latency: power of two choices on PeakEWMA cost (Finagle, Envoy, Helicone).

Cost = peak-EWMA first-byte latency x (in flight + 1). Two random candidates, the cheaper
wins: nearly as good as the global best, without the herd that always-pick-the-best
causes. A deployment with no data yet costs 0, so new or recovered ones get tried.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.canonical import CanonicalRequest, Deployment
from policies.routing.base import Plan, RouteHints, ordered_by
from policies.scoreboard import Scoreboard


class Latency:
    name = "latency"

    def __init__(self, board: Scoreboard, rng: random.Random | None = None) -> None:
        self._board = board
        self._rng = rng or random.Random()

    def cost(self, dep: Deployment, now: float) -> float:
        s = self._board.stats(dep)
        ewma = s.latency.get(now)
        return 0.0 if ewma is None else ewma * (s.in_flight + 1)

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment],
             hints: RouteHints) -> Plan:
        now = self._board.clock()
        scores = {d.id: self.cost(d, now) for d in deployments}
        if len(deployments) <= 2:
            ordered = ordered_by(deployments, scores)
        else:
            a, b = self._rng.sample(range(len(deployments)), 2)
            pair = ordered_by([deployments[a], deployments[b]], scores)
            rest = ordered_by([d for i, d in enumerate(deployments) if i not in (a, b)], scores)
            ordered = pair + rest
        return Plan(ordered, self.name, f"p2c cost={scores[ordered[0].id] * 1000:.1f}ms", scores)
