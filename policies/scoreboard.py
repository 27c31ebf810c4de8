"""Per-process live telemetry per deployment, read by routing policies.

Kept in memory on purpose: it describes what *this* process sees, is written on every
attempt, and must cost nothing on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.canonical import Deployment


@dataclass(slots=True)
class DeploymentStats:
    in_flight: int = 0
    requests: int = 0
    failures: int = 0


class Scoreboard:
    def __init__(self) -> None:
        self._stats: dict[str, DeploymentStats] = {}

    def stats(self, dep: Deployment) -> DeploymentStats:
        s = self._stats.get(dep.id)
        if s is None:
            s = self._stats[dep.id] = DeploymentStats()
        return s

    def started(self, dep: Deployment) -> None:
        s = self.stats(dep)
        s.in_flight += 1
        s.requests += 1

    def finished(self, dep: Deployment, *, ok: bool) -> None:
        s = self.stats(dep)
        s.in_flight -= 1
        if not ok:
            s.failures += 1
