"""One process's numbers, as it publishes them for the console (`live.py`): built once a
second in the background while a console is open, never on the request path.

Everything here is this process's own view: its scoreboard (attempts, latency windows,
in-flight, error rate, the pool replicas' scraped telemetry), its circuit breakers and
failover counters, and the recorder's sums. Counters are published as totals and as
rates over the time since this process's previous snapshot; latency windows as
quantile sketches, which `merge.py` combines across processes and deployments.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.canonical import Deployment
from gateway.console.recorder import Recorder, Sums
from gateway.dispatch.failover import Failover
from policies.estimators import WindowedQuantiles
from policies.scoreboard import DeploymentStats, Scoreboard

# The probabilities at which a latency window is sketched: enough points that a mixture
# of sketches gives P50 and P99 close to the pooled samples' own.
GRID = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
INCIDENTS_KEPT = 50
DECISIONS_FOR_S = 3.0  # how long a sampled decision is published

Sketch = dict[str, Any]  # {"n": samples, "q": the values at GRID}


def sketch(window: WindowedQuantiles, now: float) -> Sketch | None:
    n = window.count(now)
    if not n:
        return None
    return {"n": n, "q": [round(window.quantile(p, now) or 0.0, 6) for p in GRID]}


def _rate(now: float, before: float | None, dt: float | None) -> float | None:
    if before is None or not dt:
        return None
    return round(max(0.0, now - before) / dt, 4)


@dataclass(slots=True)
class CircuitWatch:
    """Circuit transitions of this process's breakers, seen by polling them once a second
    (whether or not anyone watches, so a console opened later still shows them)."""

    proc: str
    states: dict[str, str] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=INCIDENTS_KEPT))
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def poll(self, circuits: dict[str, dict[str, Any]], wall: float) -> None:
        for dep_id, circuit in circuits.items():
            state = circuit["state"]
            before = self.states.get(dep_id, "closed")
            if state != before:
                self.events.append({
                    "id": f"{self.proc}:c{next(self._seq)}", "t": wall, "proc": self.proc,
                    "deployment": dep_id, "from": before, "to": state,
                    "reason": circuit.get("last_failure")})
            self.states[dep_id] = state


class SnapshotBuilder:
    def __init__(self, proc: str, models: Callable[[], dict[str, list[Deployment]]],
                 board: Scoreboard, failover: Failover | None, recorder: Recorder,
                 watch: CircuitWatch) -> None:
        self.proc = proc
        self._models = models  # the registry's table, read afresh (DNS pools change)
        self.board = board
        self.failover = failover
        self.recorder = recorder
        self.watch = watch
        self._seq = itertools.count(1)
        self._prev: dict[str, float] = {}  # counter name → its total at the last snapshot
        self._prev_t: float | None = None

    def circuits(self) -> dict[str, dict[str, Any]]:
        return self.failover.breakers.snapshot() if self.failover is not None else {}

    def forget(self) -> None:
        """Nobody watches any more: the next snapshot starts its rates afresh."""
        self._prev, self._prev_t = {}, None

    def build(self, wall: float | None = None) -> dict[str, Any]:
        now = self.board.clock()
        wall = time.time() if wall is None else wall
        dt = None if self._prev_t is None else now - self._prev_t
        prev, totals = self._prev, {}

        def counted(name: str, total: float) -> float | None:
            totals[name] = total
            return _rate(total, prev.get(name), dt)

        models = self._models()
        circuits = self.circuits()
        deployments: dict[str, Any] = {}
        for deps in models.values():
            for dep in deps:
                if dep.id not in deployments:
                    deployments[dep.id] = self._deployment(dep, now, circuits.get(dep.id),
                                                           counted)
        teams = {name: self._sums(s, f"t:{name}", counted)
                 for name, s in self.recorder.teams.items()}
        keys = {f"{team}/{key}": self._sums(s, f"k:{team}/{key}", counted)
                for (team, key), s in self.recorder.keys.items()}
        snap = {"proc": self.proc, "seq": next(self._seq), "at": wall,
                "interval_s": None if dt is None else round(dt, 3),
                "models": {m: [d.id for d in deps] for m, deps in models.items()},
                "deployments": deployments, "teams": teams, "keys": keys,
                "failover": self._failover(counted),
                # The last few seconds' only: a feed reading every second sees each
                # at least once, and the store is not sent the same ones over and over.
                "decisions": [d for d in self.recorder.decisions
                              if d["t"] > wall - DECISIONS_FOR_S],
                "incidents": list(self.watch.events)}
        self._prev, self._prev_t = totals, now
        return snap

    def _deployment(self, dep: Deployment, now: float, circuit: dict[str, Any] | None,
                    counted: Callable[[str, float], float | None]) -> dict[str, Any]:
        s: DeploymentStats = self.board.by_id(dep.id)
        sums = self.recorder.deployments.get(dep.id) or Sums()
        out: dict[str, Any] = {
            "model": dep.model, "pool": dep.pool,
            "price": {"input": dep.price_input, "output": dep.price_output},
            "requests": s.requests, "failures": s.failures, "in_flight": s.in_flight,
            "rps": counted(f"d:{dep.id}:req", s.requests),
            "fps": counted(f"d:{dep.id}:fail", s.failures),
            "error_rate": round(s.error_rate.get(now), 4),
            # The first byte the client could see: a stream's first token, else the answer.
            "ttft": sketch(s.first_byte, now), "itl": sketch(s.itl, now),
            "tokens": sums.tokens, "cost_nanos": sums.cost_nanos,
            "circuit": circuit["state"] if circuit else "closed",
            "opened_total": circuit["opened_total"] if circuit else 0,
            "last_error": s.last_error,
        }
        if dep.pool is not None:
            p = s.pool
            out["replica"] = {
                "waiting": p.waiting, "running": p.running, "kv_usage": p.kv_usage,
                "prefix_hit_rate": p.prefix_hit_rate, "healthy": p.healthy,
                "stale": p.stale, "capacity": p.capacity,
                "age_s": None if p.scraped_at is None else round(now - p.scraped_at, 3)}
        return out

    @staticmethod
    def _sums(s: Sums, name: str, counted: Callable[[str, float], float | None]
              ) -> dict[str, Any]:
        return {**s.as_dict(), "rps": counted(name + ":req", s.requests),
                "cost_nanos_ps": counted(name + ":cost", s.cost_nanos),
                "tokens_ps": counted(name + ":tok", s.tokens)}

    def _failover(self, counted: Callable[[str, float], float | None]) -> dict[str, Any]:
        if self.failover is None:
            return {"enabled": False}
        fo = self.failover
        counters = asdict(fo.counters)
        budget, settings = fo.budget.snapshot(), fo.budget.settings
        # What the window allows now: the floor plus `ratio` of its requests.
        budget["allowed"] = round(settings.min_per_s * settings.window_s
                                  + settings.ratio * budget["window_requests"], 3)
        return {"enabled": True, "counters": counters,
                "rates": {k: counted(f"f:{k}", v) for k, v in counters.items()},
                "budget": budget}
