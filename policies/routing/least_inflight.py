"""Least in-flight: the deployment with the fewest requests under way goes first.

Ties rotate (a per-policy counter) so idle replicas share cold-start traffic evenly.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.canonical import CanonicalRequest, Deployment
from policies.routing.base import Plan
from policies.scoreboard import Scoreboard


class LeastInFlight:
    name = "least-in-flight"

    def __init__(self, scoreboard: Scoreboard) -> None:
        self._board = scoreboard
        self._turn = 0

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment]) -> Plan:
        n = len(deployments)
        if n == 1:
            return Plan([deployments[0]], self.name, "only deployment")
        self._turn = (self._turn + 1) % n
        rotated = [deployments[(self._turn + i) % n] for i in range(n)]
        # sorted() is stable, so equal loads keep the rotated order.
        ordered = sorted(rotated, key=lambda d: self._board.stats(d).in_flight)
        load = self._board.stats(ordered[0]).in_flight
        return Plan(ordered, self.name, f"in_flight={load}")
