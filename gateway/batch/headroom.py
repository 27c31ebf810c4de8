"""How many batch lines a self-hosted pool can take now without hurting interactive SLOs,
from what the gateway already sees of its replicas (policies/scoreboard.py: the vLLM
/metrics scrapes, the live TTFT prediction).

Thresholds come from the interactive SLO (the model's `routing.slo_ttft_ms`):
- every replica keeps a reserve of free slots for interactive bursts (`reserve` x its
  capacity, rounded up): a replica with fewer free slots at a scrape (capacity less
  running and waiting requests; a queue is the extreme case) is pressure: no new lines,
  and with `preempt` as many of the lane's lines as the reserves lack are cancelled (run
  again later), once per scrape. Waiting for a queue would be too late: the requests in
  it have already lost a slot's time;
- the pool's best predicted P99 TTFT (slo-cost's service + wait) above `ttft_fraction` x
  the SLO: no new lines. The service part comes from this process's streamed first
  tokens: a `turnout batch-worker` has none (its lines are not streamed), so there only
  the queue-wait part counts, which the reserve already covers;
- otherwise lines may fill the pool up to `fill` x its capacity, interactive requests
  included, and no further than every replica's free slots beyond its reserve. A
  replica's capacity is the most sequences it was seen to run with a queue waiting
  (vLLM's max_num_seqs), else its running sequences over its KV-cache usage (the
  sequences that fit at today's lengths); one with neither is probed with a few lines.

The lane's own lines are told apart from interactive ones by counting them at each scrape:
interactive = what the replicas ran and queued at the scrape, less the lane's lines then.
Between scrapes the lane refills the slots its own lines free, so a pool stays full even
with long scrape intervals; a rise in interactive load shows at the next scrape (pools'
`scrape_interval_s`), so the lane backs off within one interval plus one tick. The reserve
is what absorbs such a rise meanwhile.
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
    """A pool now: lines the lane may add, lines it should cancel, and why. `pressure`:
    the newest scrape shows interactive load into a replica's reserve (set once per
    scrape, so that the lane backs off once per observation)."""

    free: int = 0
    preempt: int = 0
    reason: str = ""
    pressure: bool = False


@dataclass(slots=True)
class _Seen:
    scraped_at: float = -1.0  # the newest scrape of the pool's replicas seen so far
    lane_then: int = 0  # the lane's lines on the pool when it was seen


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
        spare = lacking = 0.0  # free slots beyond the reserves; missing from them
        unknown = known = 0
        scraped = -1.0
        for dep in deps:
            p = self.board.stats(dep).pool
            if p.healthy is False or p.stale or p.scraped_at is None:
                continue
            known += 1
            scraped = max(scraped, p.scraped_at)
            used += p.running + p.waiting
            cap = p.capacity or (p.running / p.kv_usage if p.kv_usage > 0.01 else None)
            if cap:
                capacity += cap
                slack = cap - p.running - p.waiting
                reserve = math.ceil(self.batch.reserve * cap)
                spare += max(0.0, slack - reserve)
                # A queue lacks slots however large the capacity seemed (KV-cache short).
                lacking += max(0.0, reserve - slack, p.waiting)
            else:
                unknown += 1
                lacking += p.waiting  # a queue with no capacity known: each one lacks
        if not known:
            return View(0, 0, "no scrape yet")
        fresh = scraped > seen.scraped_at
        if fresh:
            seen.scraped_at, seen.lane_then = scraped, lane_lines
        if lacking > 0:
            view = View(0, 0, "interactive load in a replica's reserve")
            if fresh:  # answered once per scrape: the next shows what it did
                view.pressure = True
                if self.batch.preempt:
                    view.preempt = min(lane_lines, math.ceil(lacking))
            return view
        slo = self.slo_s(model)
        if slo is not None:
            best = min((t for d in deps if (t := self._predictor.predicted_ttft(d, now))
                        is not None), default=None)
            if best is not None and best > self.batch.ttft_fraction * slo:
                return View(0, 0, f"predicted ttft {best * 1000:.0f}ms")
        interactive = max(0.0, used - seen.lane_then)
        filling = self.batch.fill * capacity + PROBE * unknown - interactive - lane_lines
        # Lines added since the scrape take the replicas' spare slots; lines ended since
        # give theirs back.
        beyond = spare + PROBE * unknown - (lane_lines - seen.lane_then)
        free = math.floor(min(filling, beyond))
        return View(max(0, free), 0, "" if free > 0 else "full")
