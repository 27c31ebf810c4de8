"""Routing policies: order a model's deployments for one request. One module each."""

from __future__ import annotations

from collections.abc import Callable

from policies.routing.base import Plan, RouteHints, RoutingPolicy
from policies.routing.latency import Latency
from policies.routing.least_loaded import LeastLoaded
from policies.routing.prefix_affinity import PrefixAffinity
from policies.routing.round_robin import RoundRobin
from policies.routing.slo_cost import SloCost
from policies.routing.weighted import Weighted
from policies.scoreboard import Scoreboard

_FACTORIES: dict[str, Callable[[Scoreboard, str], RoutingPolicy]] = {
    "slo-cost": SloCost,
    "latency": lambda board, _: Latency(board),
    "least-loaded": lambda board, _: LeastLoaded(board),
    "prefix-affinity": lambda board, _: PrefixAffinity(board),
    "weighted": lambda board, _: Weighted(board),
    "round-robin": lambda board, _: RoundRobin(board),
}
POLICY_NAMES = tuple(_FACTORIES)


def make_policy(name: str, board: Scoreboard, within_pool: str = "least-loaded"
                ) -> RoutingPolicy:
    """`within_pool` is slo-cost's tie-break among one pool's replicas."""
    return _FACTORIES[name](board, within_pool)


__all__ = ["POLICY_NAMES", "Plan", "RouteHints", "RoutingPolicy", "make_policy"]
