"""Per-process live telemetry per deployment, read by routing policies.

Kept in memory on purpose: it describes what *this* process sees, is written on every
attempt, and must cost next to nothing on the hot path. Two sources feed it: every
upstream attempt (dispatch) and, for self-hosted replicas, the pool monitor's `/health`
probes and `/metrics` scrapes.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.canonical import Deployment
from policies.estimators import (
    DecayingMean,
    DecayingRate,
    PeakEWMA,
    PrefillFit,
    SlotRate,
    WindowedQuantiles,
)

# Prompt-token buckets for TTFT: prefill time grows with the prompt, so a replica is judged
# by prompts of about the request's size (a bucket spans at most a doubling).
SIZE_EDGES = (512, 1024, 2048)


def size_bucket(prompt_tokens: int) -> int:
    return bisect.bisect(SIZE_EDGES, prompt_tokens)


# Latency outliers: a deployment whose oldest attempt has waited for its first byte longer
# than STALL_FACTOR x its recent P99 first-byte latency (and at least STALL_MIN_S) is
# stalled: hung, or suddenly far slower than it was. Routing sends it nothing new until
# that attempt is answered or gives up, so a hung replica stops taking traffic within a
# second or two instead of holding every request sent to it until a timeout.
STALL_MIN_S = 1.0
STALL_FACTOR = 4.0
STALL_NO_DATA_S = 5.0  # the threshold while too few first bytes were seen to judge by
_MIN_SAMPLES = 5
RECENT = 3  # the last attempts' results kept, for recovery checks (routing/slo_cost.py)
_NEVER = (math.inf, math.inf)


@dataclass(slots=True)
class PoolTelemetry:
    """What a vLLM replica reports about itself (scraped from `/metrics` and `/health`)."""

    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    prefix_hit_rate: float | None = None
    in_flight_at_scrape: int = 0  # ours, so the queue can be extrapolated between scrapes
    # Concurrent sequences the replica runs at most (vLLM's max_num_seqs): the pool's
    # configured `max_num_seqs` until a scrape shows a queue, then learned as the most it
    # ran while requests waited (a replica short of KV memory runs fewer than configured).
    # None: not known yet.
    capacity: float | None = None
    capacity_learned: bool = False
    # How fast it frees slots (its completion counter against its running count): the
    # pace of the queue ahead of a request when every slot is busy.
    slots: SlotRate = field(default_factory=SlotRate)
    scraped_at: float | None = None
    # Since when scrapes have shown no queue (inf while the last one shows one): a TTFT
    # from an attempt started before then may include queue wait.
    calm_since: float = 0.0
    stale: bool = True  # the last scrape failed or is too old: don't trust the numbers
    healthy: bool | None = None  # last `/health` probe; None before the first
    # Incidents (a failing probe, scrapes failing after they worked): the last moment it
    # was seen fine before the current one began; None while it is fine.
    fine_at: float = 0.0
    trouble_from: float | None = None


@dataclass(slots=True)
class DeploymentStats:
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    timeouts: int = 0
    ttft: WindowedQuantiles = field(default_factory=WindowedQuantiles)
    # TTFT by prompt size, of attempts that did not wait in a replica's queue (as far as
    # its scrapes tell): the time to serve a prompt that size. Long prompts take longer to
    # prefill, and judging a short request by them would shut a replica out for the whole
    # window; so would a burst's queue waits, long after the queue is gone (routing
    # predicts the wait from the queue's depth instead).
    ttft_by_size: tuple[WindowedQuantiles, ...] = field(
        default_factory=lambda: tuple(WindowedQuantiles() for _ in range(len(SIZE_EDGES) + 1)))
    itl: WindowedQuantiles = field(default_factory=WindowedQuantiles)
    e2e: WindowedQuantiles = field(default_factory=WindowedQuantiles)
    # The first byte the client could see: a stream's first token, a whole answer's end.
    first_byte: WindowedQuantiles = field(default_factory=WindowedQuantiles)
    awaiting: dict[int, float] = field(default_factory=dict)  # attempt → start, until its
    # first byte (or its end)
    latency: PeakEWMA = field(default_factory=PeakEWMA)  # first byte the client could see
    error_rate: DecayingRate = field(default_factory=DecayingRate)
    last_error: str | None = None
    last_error_at: float | None = None
    pool: PoolTelemetry = field(default_factory=PoolTelemetry)
    # Of unqueued attempts: prefill time per prompt token (for sizes it has barely served)
    # and how long one holds a slot (when the replica's own completion count is unknown).
    prefill: PrefillFit = field(default_factory=lambda: PrefillFit(len(SIZE_EDGES) + 1))
    hold: DecayingMean = field(default_factory=DecayingMean)
    # (start, seconds to the first byte the client could see; inf: failed) of the last
    # attempts, oldest first: the evidence that a deployment shunned in an incident is
    # fine again.
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RECENT))
    # Attempts started in this span (the last incident) are no evidence of what the
    # deployment does now: it was down, and what they saw was the outage.
    incident: tuple[float, float] = _NEVER

    def stalled(self, now: float) -> bool:
        """Whether an attempt has waited for its first byte far longer than usual."""
        if not self.awaiting:
            return False
        waited = now - next(iter(self.awaiting.values()))  # the oldest: see `started`
        if waited < STALL_MIN_S:
            return False
        if self.first_byte.count(now) < _MIN_SAMPLES:
            return waited > STALL_NO_DATA_S
        p99 = self.first_byte.quantile(0.99, now) or 0.0
        return waited > max(STALL_MIN_S, STALL_FACTOR * p99)

    def queue_estimate(self) -> float:
        """Requests that would wait at a replica now: the last scrape plus what we sent
        since, less the free slots that absorb them."""
        return self.queue_ahead() or 0.0

    def queue_ahead(self) -> float | None:
        """Requests a new one would find ahead of it in a vLLM replica's queue now (0: none,
        but every slot is busy); None when a slot is free or nothing says otherwise."""
        p = self.pool
        if p.stale or p.scraped_at is None:
            return None
        sent_since = self.in_flight - p.in_flight_at_scrape
        if p.capacity is None:  # never seen it full: only an existing queue grows
            return max(0.0, p.waiting + sent_since) if p.waiting > 0 else None
        ahead = p.running + p.waiting + sent_since - p.capacity
        return ahead if ahead >= 0 else None

    def slot_rate(self) -> float | None:
        """Requests a busy slot completes per second: the replica's own count, else the
        inverse of how long our unqueued attempts held one; None: nothing to go on."""
        rate = self.pool.slots.per_slot()
        if rate is not None:
            return rate
        hold = self.hold.get()
        return 1 / hold if hold else None

    def evidence(self, started: float) -> bool:
        """Whether an attempt started then says anything about the deployment now."""
        lo, hi = self.incident
        return not lo <= started < hi

    def record_scrape(self, *, waiting: float, running: float, kv_usage: float,
                      prefix_hit_rate: float | None, now: float,
                      completed: float | None = None) -> None:
        """`completed`: the replica's count of finished requests, if it reports one."""
        p = self.pool
        p.waiting, p.running, p.kv_usage = waiting, running, kv_usage
        p.prefix_hit_rate = prefix_hit_rate
        p.slots.scrape(completed, running, now)
        if waiting > 0:
            if p.calm_since != math.inf and p.scraped_at is not None:
                # A queue formed since the last scrape: the TTFTs of the attempts it
                # held were taken for service time; forget what came in since.
                for window in self.ttft_by_size:
                    window.drop_after(p.scraped_at)
            p.calm_since = math.inf
            if running > 0 and (not p.capacity_learned or running > (p.capacity or 0)):
                p.capacity, p.capacity_learned = running, True
        elif p.calm_since == math.inf:
            p.calm_since = now
        p.in_flight_at_scrape = self.in_flight
        p.scraped_at = now
        p.stale = False
        self._fine(now)

    def scrape_failed(self) -> None:
        p = self.pool
        p.stale = True
        if p.scraped_at is not None:  # it answered scrapes before: something is wrong
            self._trouble()

    def record_health(self, healthy: bool, now: float) -> None:
        self.pool.healthy = healthy
        if healthy:
            self._fine(now)
        else:
            self._trouble()

    def _trouble(self) -> None:
        p = self.pool
        if p.trouble_from is None:
            p.trouble_from = p.fine_at

    def _fine(self, now: float) -> None:
        """Probes and scrapes find it fine (both, where it answers both): an incident is
        over. What was measured during it described the outage, not the replica: its
        samples go, its errors are forgiven, and attempts started during it (a stopped
        process's backlog, answered late) are ignored when they end, so routing judges
        the replica by what it did before and does after, at once."""
        p = self.pool
        if p.healthy is False or (p.stale and p.scraped_at is not None):
            return
        p.fine_at = now
        since = p.trouble_from
        if since is None:
            return
        p.trouble_from = None
        self.forgive(since)
        self.incident = (since, now)
        self.recent.clear()

    def forgive(self, since: float) -> None:
        """An incident that began at `since` is over: forget what was measured since (it
        described the incident, not the deployment) and the errors it caused."""
        for window in (self.ttft, self.first_byte, self.itl, self.e2e, *self.ttft_by_size):
            window.drop_after(since)
        self.error_rate.value = 0.0


class Scoreboard:
    """`clock` (monotonic seconds) is injectable so the routing simulation can run the
    real policies on simulated time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._stats: dict[str, DeploymentStats] = {}

    def stats(self, dep: Deployment) -> DeploymentStats:
        return self.by_id(dep.id)

    def by_id(self, deployment_id: str) -> DeploymentStats:
        s = self._stats.get(deployment_id)
        if s is None:
            s = self._stats[deployment_id] = DeploymentStats()
        return s

    def snapshot(self) -> dict[str, DeploymentStats]:
        return dict(self._stats)

    def started(self, dep: Deployment, attempt: object | None = None) -> DeploymentStats:
        """An attempt begins; `attempt` (its identity) is watched until its first byte,
        for `DeploymentStats.stalled`."""
        s = self.by_id(dep.id)
        s.in_flight += 1
        s.requests += 1
        if attempt is not None:
            # In the order attempts start (an id reused: moved to the end), so the first
            # is the oldest: `stalled` reads it on every plan without scanning them all.
            s.awaiting.pop(id(attempt), None)
            s.awaiting[id(attempt)] = self.clock()
        return s

    def first_token(self, s: DeploymentStats, ttft_s: float, prompt_tokens: int = 0,
                    attempt: object | None = None) -> None:
        """A stream's first token arrived (recorded now, not when the stream ends)."""
        now = self.clock()
        if attempt is not None:
            s.awaiting.pop(id(attempt), None)
        started = now - ttft_s
        if not s.evidence(started):
            return
        s.recent.append((started, ttft_s))
        s.first_byte.add(ttft_s, now)
        s.ttft.add(ttft_s, now)
        p = s.pool
        if p.stale or started >= p.calm_since:  # it started with no queue in sight
            b = size_bucket(prompt_tokens)
            s.ttft_by_size[b].add(ttft_s, now)
            if p.trouble_from is None:  # (an outage's samples will be dropped: not here)
                s.prefill.add(prompt_tokens, ttft_s, b, now)
        s.latency.observe(ttft_s, now)

    def succeeded(self, s: DeploymentStats, *, e2e_s: float, streamed: bool,
                  itl_s: float | None = None, attempt: object | None = None) -> None:
        now = self.clock()
        s.in_flight -= 1
        if attempt is not None:
            s.awaiting.pop(id(attempt), None)
        started = now - e2e_s
        if not s.evidence(started):
            return
        if not streamed:  # the whole answer was the first byte the client could see
            s.recent.append((started, e2e_s))
            s.latency.observe(e2e_s, now)
            s.first_byte.add(e2e_s, now)
        s.e2e.add(e2e_s, now)
        if s.pool.stale or started >= s.pool.calm_since:  # held a slot all along
            s.hold.add(e2e_s, now)
        if itl_s is not None:
            s.itl.add(itl_s, now)
        s.error_rate.observe(False, now)

    def failed(self, s: DeploymentStats, reason: str, *, timeout: bool = False,
               upstream_fault: bool = True, attempt: object | None = None) -> None:
        """An attempt that ended badly; `upstream_fault=False` for the client's own doing
        (a rejected request, a client that went away), which says nothing about health."""
        now = self.clock()
        s.in_flight -= 1
        started = now
        if attempt is not None:
            started = s.awaiting.pop(id(attempt), now)
        if not upstream_fault:
            return
        s.failures += 1
        s.timeouts += timeout
        s.last_error = reason
        s.last_error_at = now
        if s.evidence(started):
            s.recent.append((started, math.inf))
            s.error_rate.observe(True, now)
