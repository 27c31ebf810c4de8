"""The routing-policy interface: candidates in, an ordered plan with its reason out.

A policy orders *all* candidates (dispatch tries them in order as failover lands) and
says why the first one won, briefly, for the `x-turnout-route` header; `scores` holds
what each candidate was judged on, for debug logs and trace spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.canonical import CanonicalRequest, Deployment
from policies.scoreboard import Scoreboard


@dataclass(slots=True)
class RouteHints:
    """What the pipeline knows about the request that routing may weigh."""

    slo_ttft_s: float | None = None  # the TTFT the request must meet, if any
    prompt_tokens: int = 0  # estimated
    max_tokens: int = 0  # the output budget the request allows


@dataclass(slots=True)
class Plan:
    candidates: list[Deployment]  # in the order dispatch should try them
    policy: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    meets_slo: bool = True  # False when no candidate is predicted to meet the SLO
    predicted_ttft_s: float | None = None  # of the first candidate, when known


class RoutingPolicy(Protocol):
    name: str

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment],
             hints: RouteHints) -> Plan: ...


class Rotor:
    """Rotates the starting point among equals, so ties spread load instead of piling
    onto the first-listed deployment."""

    __slots__ = ("_turn",)

    def __init__(self) -> None:
        self._turn = 0

    def rotate(self, deployments: Sequence[Deployment]) -> list[Deployment]:
        n = len(deployments)
        if n < 2:
            return list(deployments)
        self._turn = (self._turn + 1) % n
        t = self._turn
        return [*deployments[t:], *deployments[:t]]


def ordered_by(deployments: Sequence[Deployment], score: dict[str, float]) -> list[Deployment]:
    """Ascending by score; `sorted` is stable, so equal scores keep the given order."""
    return sorted(deployments, key=lambda d: score[d.id])


def load(board: Scoreboard, dep: Deployment) -> float:
    """Requests in flight from us plus, for a vLLM replica, its queue beyond ours."""
    s = board.stats(dep)
    return s.in_flight + s.queue_estimate()
