"""Weighted: smooth weighted round-robin (nginx's), so a 3:1 split is A A B A, not A A A B."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.canonical import CanonicalRequest, Deployment
from policies.routing.base import Plan, RouteHints
from policies.scoreboard import Scoreboard


class Weighted:
    name = "weighted"

    def __init__(self, board: Scoreboard) -> None:
        self._current: dict[str, float] = {}

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment],
             hints: RouteHints) -> Plan:
        total = 0.0
        for d in deployments:
            self._current[d.id] = self._current.get(d.id, 0.0) + d.weight
            total += d.weight
        ordered = sorted(deployments, key=lambda d: -self._current[d.id])
        self._current[ordered[0].id] -= total
        return Plan(ordered, self.name, f"weight={ordered[0].weight:g}/{total:g}")
