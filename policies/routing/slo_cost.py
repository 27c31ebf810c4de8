"""SLO-cost (the default): the cheapest deployment predicted to meet the request's TTFT
SLO; if none is, the one with the best predicted TTFT.

Prediction per deployment = service + wait.

- Service: the P99 TTFT it showed over the last minute for prompts of about this size,
  from attempts that did not wait in a replica's queue. A size it has too few samples of
  is judged by the nearest larger size it has (an upper bound), else by the nearest
  smaller one plus its prefill time per token (learned across every size it served) for
  the tokens this prompt has beyond that size's mean.
- Wait (vLLM replicas): zero while the replica has a free slot (its last scrape, plus
  what we sent since, against its capacity). Once every slot is busy, a new request gets
  the (ahead + 1)-th slot to free, and slots free at the replica's live completion rate
  (its completion counter against its running count between scrapes: every slot busy,
  one frees every hold / slots seconds); the prediction is that wait's P99.

So the cheap self-hosted pool is filled up to what still meets the SLO, and the rest
spills to paid providers.

Incidents end. A deployment shunned because it turned slow or failing, with no outage to
mark the end (a slowdown, a storm of 429s), is on probation from the moment it is
shunned, whatever its price, and gets a probe now and then while it is no dearer than the
plan's choice (or failing while nothing meets the SLO): the request goes there
first, failover behind it, every `PROBE_GAP_S` doubling to `PROBE_GAP_MAX_S` while the
probes fail. Once its last `RECENT` attempts, all started since it was shunned, met the
SLO, what was measured since the incident began (its oldest sample over the SLO) is
forgotten, and it is judged by what it did before and does now. Only requests no larger
than the smallest size it has data for probe a slow one, so a replica merely too slow for
long prompts is never probed with them. (An outage that probes and scrapes see, a stopped
or killed replica, ends when they find it fine again: policies/scoreboard.py.)

Deployments with no data yet are assumed to meet the SLO, so a cheap pool takes traffic
first. Among replicas of one pool (equal price) the within-pool step decides:
least-loaded, or prefix-affinity to reuse vLLM's prefix cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from gateway.canonical import CanonicalRequest, Deployment
from policies.kv_index import KvIndex, KvView
from policies.routing.base import Plan, RouteHints
from policies.routing.kv_aware import KvAware
from policies.routing.least_loaded import LeastLoaded
from policies.routing.prefix_affinity import PrefixAffinity
from policies.scoreboard import RECENT, DeploymentStats, Scoreboard, size_bucket

MIN_SAMPLES = 5  # fewer TTFT samples than this are no basis for a quantile
QUANTILE = 0.99
UNHEALTHY_ERROR_RATE = 0.5
PROBE_GAP_S = 0.25
PROBE_GAP_MAX_S = 2.0
_DEFAULT_HOLD_S = 1.0  # how long a request holds a slot, before any has been measured
_Z = NormalDist().inv_cdf(QUANTILE)


def erlang_quantile(k: float, z: float = _Z) -> float:
    """The quantile (standard normal score `z`) of the sum of `k` >= 1 exponential waits of
    mean 1 (a Gamma(k, 1) variable), by the Wilson-Hilferty approximation (within 1% of
    the exact P99 for every k >= 1). The wait for the k-th slot to free among busy ones."""
    return k * (1 - 1 / (9 * k) + z / (3 * math.sqrt(k))) ** 3


@dataclass(slots=True)
class _Probe:
    """A deployment shunned in an incident: since when, by which SLO, and when it may next
    be probed."""

    since: float
    slo: float
    next_at: float
    sizes: int  # the largest prompt size bucket a probe may have
    gap: float = PROBE_GAP_S


class SloCost:
    name = "slo-cost"

    def __init__(self, board: Scoreboard, within_pool: str = "least-loaded",
                 kv: KvView | None = None) -> None:
        """`kv`: what the pools' KV events say, for `within_pool: kv-aware`."""
        self._board = board
        # kv-aware: the replica holding the longest prefix, its TTFT predicted for the
        # part of the prompt it does not hold (the cached prefix is not prefilled again).
        self._kv = KvAware(board, kv or KvView(KvIndex()),
                           lambda d, tokens: self.predicted_ttft(d, board.clock(), tokens)
                           ) if within_pool == "kv-aware" else None
        self._within: LeastLoaded | PrefixAffinity | KvAware = self._kv or (
            PrefixAffinity(board) if within_pool == "prefix-affinity" else LeastLoaded(board))
        self._probes: dict[str, _Probe] = {}

    def predicted_ttft(self, dep: Deployment, now: float, prompt_tokens: int = 0
                       ) -> float | None:
        """Predicted P99 TTFT in seconds for a prompt of this size; None when there is
        nothing to go on."""
        s = self._board.stats(dep)
        if s.error_rate.get(now) > UNHEALTHY_ERROR_RATE:
            return float("inf")
        service = self.service_ttft(s, now, prompt_tokens)
        wait = self.queue_wait(s, now)
        return service if wait <= 0 else (service or 0.0) + wait

    @staticmethod
    def service_ttft(s: DeploymentStats, now: float, prompt_tokens: int) -> float | None:
        """P99 TTFT of unqueued attempts with prompts of this size; with too few of them,
        of the nearest larger size (an upper bound), else of the nearest smaller one plus
        the prefill time of the tokens beyond that size's mean. None when no size has
        enough."""
        windows = s.ttft_by_size
        b = size_bucket(prompt_tokens)
        for i in range(b, len(windows)):
            if windows[i].count(now) >= MIN_SAMPLES:
                return windows[i].quantile(QUANTILE, now)
        for i in range(b - 1, -1, -1):
            if windows[i].count(now) >= MIN_SAMPLES:
                q = windows[i].quantile(QUANTILE, now) or 0.0
                slope, mean = s.prefill.slope(), s.prefill.mean_tokens(i)
                if slope is None or mean is None:
                    return q
                return q + slope * max(0.0, prompt_tokens - mean)
        return None

    @staticmethod
    def slot_gap(s: DeploymentStats) -> float:
        """Mean seconds between two slots freeing at a replica whose every slot is busy."""
        p = s.pool
        slots = p.capacity if p.capacity is not None else max(1.0, p.running)
        rate = s.slot_rate()
        return (1 / rate if rate else _DEFAULT_HOLD_S) / slots

    @classmethod
    def queue_wait(cls, s: DeploymentStats, now: float) -> float:
        """P99 wait for a slot at a vLLM replica; 0 with a slot free (or nothing known).
        With `ahead` requests queued before it, a new one gets the (ahead+1)-th slot to
        free."""
        ahead = s.queue_ahead()
        if ahead is None:
            return 0.0
        return erlang_quantile(ahead + 1) * cls.slot_gap(s)

    def _cheapest_first(self, req: CanonicalRequest, meets: list[Deployment],
                        hints: RouteHints) -> list[Deployment]:
        """By price; among equals (one pool's replicas) the within-pool step orders, over
        only those replicas, so an affinity home outside them cannot void it."""
        by_price: dict[float, list[Deployment]] = {}
        for d in meets:
            by_price.setdefault(self.price(d, hints), []).append(d)
        ordered: list[Deployment] = []
        for price in sorted(by_price):
            group = by_price[price]
            ordered += self._within.order(req, group, hints)[0] if len(group) > 1 else group
        return ordered

    @staticmethod
    def price(dep: Deployment, hints: RouteHints) -> float:
        """USD for this request at list price (per-token prices are per 1M tokens)."""
        if hints.prompt_tokens or hints.max_tokens:
            return (hints.prompt_tokens * dep.price_input
                    + hints.max_tokens * dep.price_output) / 1e6
        return (dep.price_input + dep.price_output) / 1e6

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment],
             hints: RouteHints) -> Plan:
        slo = hints.slo_ttft_s
        now = self._board.clock()
        if slo is not None and self._probes:
            self._recoveries(now, slo)
        if len(deployments) == 1:  # nothing to choose: predict only for the SLO (shedding)
            if slo is None:
                return Plan(list(deployments), self.name, "only deployment")
            dep = deployments[0]
            p = self.predicted_ttft(dep, now, hints.prompt_tokens)
            why = "only deployment" + (f", p99~{p * 1000:.0f}ms" if p is not None else "")
            return Plan([dep], self.name, why, {dep.id: -1.0 if p is None else p},
                        p is None or p <= slo, p)
        tokens = hints.prompt_tokens
        cached = self._kv.cached_tokens(req, deployments) if self._kv is not None else {}
        pred = {d.id: self.predicted_ttft(d, now, max(0, tokens - cached.get(d.id, 0)))
                for d in deployments}
        meets = [d for d in deployments if slo is None or (p := pred[d.id]) is None or p <= slo]
        scores = {k: -1.0 if v is None else v for k, v in pred.items()}  # -1: no data
        if meets:
            ordered = self._cheapest_first(req, meets, hints)
            rest = sorted((d for d in deployments if d not in meets),
                          key=lambda d: pred[d.id] or 0.0)
            first = ordered[0]
            p = pred[first.id]
            why = ("cheapest" if slo is None else f"cheapest meeting ttft<={slo * 1000:.0f}ms")
            why += f", p99~{p * 1000:.0f}ms" if p is not None else ", no data yet"
            plan = Plan([*ordered, *rest], self.name, why, scores, True, p)
        else:
            ordered = sorted(deployments, key=lambda d: pred[d.id] or 0.0)
            p = pred[ordered[0].id]
            assert slo is not None
            plan = Plan(ordered, self.name, f"none meets ttft<={slo * 1000:.0f}ms: best "
                        f"predicted {(p or 0.0) * 1000:.0f}ms", scores, False, p)
        if slo is not None:
            self._probe(plan, deployments, meets, now, tokens, slo, hints)
        if self._kv is not None:
            first = plan.candidates[0]
            self._kv.routed(req, first)  # its blocks count as cached there from now
            if first.id in cached:
                plan.reason += f"; kv prefix {cached[first.id]} tokens cached"
        return plan

    # -- incidents: probing a shunned deployment, and its recovery ---------------------------

    def _incident(self, s: DeploymentStats, now: float, slo: float) -> int | None:
        """The largest prompt size bucket a probe may have, if the deployment is shunned
        for something other than its load or prompt sizes: failing, or too slow, with a
        slot free, even for the smallest prompts it has data for (a replica merely too slow
        for long prompts is not probed with them). None: no incident."""
        if s.error_rate.get(now) > UNHEALTHY_ERROR_RATE:
            return len(s.ttft_by_size)
        if s.queue_ahead() is not None:
            return None  # busy, not broken: the queue model speaks for it
        for i, window in enumerate(s.ttft_by_size):
            if window.count(now) >= MIN_SAMPLES:
                return i if (window.quantile(QUANTILE, now) or 0.0) > slo else None
        return None

    def _probe(self, plan: Plan, deployments: Sequence[Deployment], meets: list[Deployment],
               now: float, tokens: int, slo: float, hints: RouteHints) -> None:
        """Put every deployment the incident check finds shunned under probation, and send
        this request to one first when it is due a probe and would be preferred if it were
        well: no dearer than the plan's choice (a pool replica whose sibling meets the SLO
        would share the pool's traffic), or failing while the plan meets nothing."""
        first = plan.candidates[0]
        choice_price = self.price(first, hints)
        probe: tuple[Deployment, _Probe] | None = None
        for d in deployments:
            if d in meets:
                continue
            s = self._board.stats(d)
            state = self._probes.get(d.id)
            if state is None:
                # On probation from the moment it is shunned, whatever its price: what it
                # answers from now on (as the best of none meeting the SLO, as a failover,
                # as a probe) is evidence of its recovery.
                sizes = self._incident(s, now, slo)
                if sizes is None:
                    continue
                state = self._probes[d.id] = _Probe(now, slo, now + PROBE_GAP_S, sizes)
            # (A slow one is already first when it is the best predicted; a failing one
            # never is, though its failures may be over.)
            if (probe is not None or d is first or now < state.next_at
                    or size_bucket(tokens) > state.sizes):
                continue
            failing = s.error_rate.get(now) > UNHEALTHY_ERROR_RATE
            if self.price(d, hints) <= choice_price or (failing and not plan.meets_slo):
                probe = d, state
        if probe is None:
            return
        d, state = probe
        state.next_at = now + state.gap
        state.gap = min(PROBE_GAP_MAX_S, state.gap * 2)
        plan.candidates.remove(d)
        plan.candidates.insert(0, d)
        plan.reason = f"probing {d.id} (shunned {now - state.since:.1f}s); {plan.reason}"

    def _recoveries(self, now: float, slo: float) -> None:
        """Deployments under probation: well again once their last attempts, all started
        since they were shunned, met the SLO (then what was measured since the incident
        began is forgotten), or once the incident has left no trace; the next probe comes
        at once after one that met it."""
        for dep_id, state in list(self._probes.items()):
            s = self._board.by_id(dep_id)
            recent = s.recent
            if recent and recent[-1][0] >= state.since:
                if recent[-1][1] <= slo:
                    state.gap, state.next_at = PROBE_GAP_S, min(state.next_at, now)
                if (len(recent) == RECENT and recent[0][0] >= state.since
                        and all(ttft <= slo for _, ttft in recent)):
                    s.forgive(self._began(s, state))
                    del self._probes[dep_id]
                    continue
            if self._incident(s, now, slo) is None:
                del self._probes[dep_id]

    @staticmethod
    def _began(s: DeploymentStats, state: _Probe) -> float:
        """Just before the incident's first sample over the SLO (its errors: since it was
        shunned); a scan of the windows, once per recovery."""
        began = min((t for w in s.ttft_by_size if (t := w.first_above(state.slo)) is not None),
                    default=state.since)
        return math.nextafter(min(began, state.since), -math.inf)
