"""The routing-policy interface: candidates in, an ordered plan with its reason out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.canonical import CanonicalRequest, Deployment
from policies.scoreboard import Scoreboard


@dataclass(slots=True)
class Plan:
    candidates: list[Deployment]  # in the order dispatch should try them
    policy: str
    reason: str


class RoutingPolicy(Protocol):
    name: str

    def __init__(self, scoreboard: Scoreboard) -> None: ...

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment]) -> Plan: ...
