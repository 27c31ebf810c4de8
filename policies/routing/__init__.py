"""Routing policies: order a model's deployments for one request."""

from __future__ import annotations

from policies.routing.base import Plan, RoutingPolicy
from policies.routing.least_inflight import LeastInFlight

POLICIES: dict[str, type[RoutingPolicy]] = {"least-in-flight": LeastInFlight}

__all__ = ["POLICIES", "Plan", "RoutingPolicy"]
