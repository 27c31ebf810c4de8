"""Round-robin: each deployment in turn, whatever it costs or how it performs."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.canonical import CanonicalRequest, Deployment
from policies.routing.base import Plan, Rotor, RouteHints
from policies.scoreboard import Scoreboard


class RoundRobin:
    name = "round-robin"

    def __init__(self, board: Scoreboard) -> None:
        self._rotor = Rotor()

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment],
             hints: RouteHints) -> Plan:
        return Plan(self._rotor.rotate(deployments), self.name, "turn")
