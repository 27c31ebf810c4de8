"""How many batch lines a self-hosted pool can take now without hurting interactive SLOs,
from what the gateway already sees of its replicas (policies/scoreboard.py: the vLLM
/metrics scrapes, the live TTFT prediction).

Thresholds come from the interactive SLO (the model's `routing.slo_ttft_ms`):
- a replica queueing requests (vLLM `num_requests_waiting` > 0) is pressure: no new lines,
  and with `preempt` as many of the lane's lines as requests queue are cancelled (run
  again later), once per scrape;
- the pool's best predicted P99 TTFT (slo-cost's service + wait) above `ttft_fraction` x
  the SLO: no new lines;
- otherwise lines may fill the pool up to `fill` x its capacity, interactive requests
  included. A replica's capacity is the most sequences it was seen to run with a queue
  waiting (vLLM's max_num_seqs), else its running sequences over its KV-cache usage (the
  sequences that fit at today's lengths); one with neither is probed with a few lines.

The lane's own lines are told apart from interactive ones by counting them at each scrape:
interactive = what the replicas ran and queued at the scrape, less the lane's lines then.
Between scrapes the lane refills the slots its own lines free, so a pool stays full even
with long scrape intervals; a rise in interactive load shows at the next scrape (pools'
`scrape_interval_s`), so the lane backs off within one interval plus one tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.batch.settings import BatchConfig
from gateway.canonical import Deployment
from gateway.config import Config
from gateway.registry import Registry
from policies.routing.slo_cost import SloCost
from policies.scoreboard import Scoreboard

PROBE = 4  # lines a replica of unknown capacity is given at a time


@dataclass(slots=True)
class View:
    """A pool now: lines the lane may add, lines it should cancel, and why."""

    free: int = 0
    preempt: int = 0
    reason: str = ""


@dataclass(slots=True)
class _Seen:
    scraped_at: float = -1.0  # the newest scrape of the pool's replicas seen so far
    lane_then: int = 0  # the lane's lines on the pool when it was seen
    preempted_at: float = -1.0  # the scrape the last preemption answered


class Headroom:
    def __init__(self, board: Scoreboard, registry: Registry, config: Config) -> None:
        self.board = board
        self.registry = registry
        self.config = config
        self._seen: dict[str, _Seen] = {}
        self._predictor = SloCost(board)  # slo-cost's prediction, read only

    @property
    def batch(self) -> BatchConfig:
        return self.config.batch

    def replicas(self, model: str) -> list[Deployment]:
        """The model's self-hosted deployments (none: it runs on providers only)."""
        return [d for d in self.registry.models.get(model, ()) if d.pool is not None]

    def slo_s(self, model: str) -> float | None:
        mc = self.config.models.get(model)
        routing = mc.routing if mc is not None and mc.routing is not None else self.config.routing
        slo = routing.slo_ttft_ms or self.config.routing.slo_ttft_ms
        return slo / 1000 if slo else None

    def view(self, model: str, lane_lines: int) -> View:
        """The pool(s) serving `model`, with `lane_lines` of the lane's lines on them now."""
        deps = self.replicas(model)
        if not deps:
            return View(max(0, self.batch.provider_in_flight - lane_lines), 0, "providers")
        seen = self._seen.setdefault(model, _Seen())
        now = self.board.clock()
        used = capacity = 0.0
        queued, unknown, known = 0.0, 0, 0
        scraped = -1.0
        for dep in deps:
            p = self.board.stats(dep).pool
            if p.healthy is False or p.stale or p.scraped_at is None:
                continue
            known += 1
            scraped = max(scraped, p.scraped_at)
            used += p.running + p.waiting
            queued += p.waiting
            cap = p.capacity or (p.running / p.kv_usage if p.kv_usage > 0.01 else None)
            if cap:
                capacity += cap
            else:
                unknown += 1
        if not known:
            return View(0, 0, "no scrape yet")
        fresh = scraped > seen.scraped_at
        if fresh:
            seen.scraped_at, seen.lane_then = scraped, lane_lines
        if queued > 0:
            preempt = 0
            if self.batch.preempt and fresh and seen.preempted_at < scraped:
                seen.preempted_at = scraped
                preempt = min(lane_lines, math.ceil(queued))
            return View(0, preempt, "interactive requests queue")
        slo = self.slo_s(model)
        if slo is not None:
            best = min((t for d in deps if (t := self._predictor.predicted_ttft(d, now))
                        is not None), default=None)
            if best is not None and best > self.batch.ttft_fraction * slo:
                return View(0, 0, f"predicted ttft {best * 1000:.0f}ms")
        interactive = max(0.0, used - seen.lane_then)
        allowed = self.batch.fill * capacity + PROBE * unknown
        free = math.floor(allowed - interactive - lane_lines)
        return View(max(0, free), 0, "" if free > 0 else "full")
