"""Least-loaded: fewest requests in flight from us plus the replica's own queue (vLLM's
`num_requests_waiting`, extrapolated between scrapes). Ties rotate."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.canonical import CanonicalRequest, Deployment
from policies.routing.base import Plan, Rotor, RouteHints, load, ordered_by
from policies.scoreboard import Scoreboard


class LeastLoaded:
    name = "least-loaded"

    def __init__(self, board: Scoreboard) -> None:
        self._board = board
        self._rotor = Rotor()

    def order(self, req: CanonicalRequest, deployments: Sequence[Deployment],
              hints: RouteHints | None = None) -> tuple[list[Deployment], str]:
        """`hints` are not needed here (slo-cost's within-pool steps share a signature)."""
        scores = {d.id: load(self._board, d) for d in deployments}
        ordered = ordered_by(self._rotor.rotate(deployments), scores)
        return ordered, f"load={scores[ordered[0].id]:g}" if ordered else "none"

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment],
             hints: RouteHints) -> Plan:
        ordered, reason = self.order(req, deployments)
        return Plan(ordered, self.name, reason)
