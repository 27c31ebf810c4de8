"""Routing policies: order a model's deployments for one request. One module each."""

from __future__ import annotations

from collections.abc import Callable

from policies.kv_index import KvIndex, KvView
from policies.routing.base import Plan, RouteHints, RoutingPolicy
from policies.routing.kv_aware import KvAware
from policies.routing.latency import Latency
from policies.routing.least_loaded import LeastLoaded
from policies.routing.prefix_affinity import PrefixAffinity
from policies.routing.round_robin import RoundRobin
from policies.routing.slo_cost import SloCost
from policies.routing.weighted import Weighted
from policies.scoreboard import Scoreboard


def _kv_aware(board: Scoreboard, kv: KvView) -> KvAware:
    """On its own, kv-aware judges a replica's queue by slo-cost's TTFT prediction."""
    slo = SloCost(board)
    return KvAware(board, kv, lambda d, tokens: slo.predicted_ttft(d, board.clock(), tokens))


_FACTORIES: dict[str, Callable[[Scoreboard, str, KvView], RoutingPolicy]] = {
    "slo-cost": lambda board, within, kv: SloCost(board, within, kv),
    "kv-aware": lambda board, _, kv: _kv_aware(board, kv),
    "latency": lambda board, _, kv: Latency(board),
    "least-loaded": lambda board, _, kv: LeastLoaded(board),
    "prefix-affinity": lambda board, _, kv: PrefixAffinity(board),
    "weighted": lambda board, _, kv: Weighted(board),
    "round-robin": lambda board, _, kv: RoundRobin(board),
}
POLICY_NAMES = tuple(_FACTORIES)


def make_policy(name: str, board: Scoreboard, within_pool: str = "least-loaded",
                kv: KvView | None = None) -> RoutingPolicy:
    """`within_pool` is slo-cost's tie-break among one pool's replicas; `kv`, what the
    pools' KV events say (none: no pool publishes them)."""
    return _FACTORIES[name](board, within_pool, kv if kv is not None else KvView(KvIndex()))


__all__ = ["POLICY_NAMES", "Plan", "RouteHints", "RoutingPolicy", "make_policy"]
