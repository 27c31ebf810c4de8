"""SLO-cost (the default): the cheapest deployment predicted to meet the request's TTFT
SLO; if none is, the one with the best predicted TTFT.

Prediction per deployment = service + wait. Service: the P99 TTFT it showed over the
last minute for prompts of about this size, from attempts that did not wait in a
replica's queue. Wait (vLLM replicas): zero while the replica has a free slot (its last
scrape, plus what we sent since, against its capacity); once every slot is busy, the
P99 of the wait for the slots ahead of this request to free up, slots freeing at
capacity / mean request time. So the cheap self-hosted pool is filled up to what still
meets the SLO, and the rest spills to paid providers. Deployments with no data yet are
assumed to meet the SLO, so a cheap pool takes traffic first.
Among replicas of one pool (equal price) the within-pool step decides: least-loaded, or
prefix-affinity to reuse vLLM's prefix cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from gateway.canonical import CanonicalRequest, Deployment
from policies.routing.base import Plan, RouteHints
from policies.routing.least_loaded import LeastLoaded
from policies.routing.prefix_affinity import PrefixAffinity
from policies.scoreboard import DeploymentStats, Scoreboard, size_bucket

MIN_SAMPLES = 5  # fewer TTFT samples than this are no basis for a quantile
QUANTILE = 0.99
UNHEALTHY_ERROR_RATE = 0.5
_DEFAULT_SERVICE_S = 1.0  # a request's duration before any has been measured
_Z = NormalDist().inv_cdf(QUANTILE)


def erlang_quantile(k: float, z: float = _Z) -> float:
    """The quantile (standard normal score `z`) of the sum of `k` >= 1 exponential waits of
    mean 1 (a Gamma(k, 1) variable), by the Wilson-Hilferty approximation (within 1% of
    the exact P99 for every k >= 1). The wait for the k-th slot to free among busy ones."""
    return k * (1 - 1 / (9 * k) + z / (3 * math.sqrt(k))) ** 3


class SloCost:
    name = "slo-cost"

    def __init__(self, board: Scoreboard, within_pool: str = "least-loaded") -> None:
        self._board = board
        self._within: LeastLoaded | PrefixAffinity = (
            PrefixAffinity(board) if within_pool == "prefix-affinity" else LeastLoaded(board))

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
        of the nearest larger size (an upper bound), else of the nearest smaller one (a
        lower bound: worth a try). None when no size has enough."""
        windows = s.ttft_by_size
        b = size_bucket(prompt_tokens)
        for i in (b, *range(b + 1, len(windows)), *range(b - 1, -1, -1)):
            if windows[i].count(now) >= MIN_SAMPLES:
                return windows[i].quantile(QUANTILE, now)
        return None

    @staticmethod
    def queue_wait(s: DeploymentStats, now: float) -> float:
        """P99 wait for a slot at a vLLM replica; 0 with a slot free (or nothing known).
        With `ahead` requests queued before it, a new one gets the (ahead+1)-th slot to
        free; slots free at about `slots` / mean request time."""
        ahead = s.queue_ahead()
        if ahead is None:
            return 0.0
        p = s.pool
        slots = p.capacity if p.capacity is not None else max(1.0, p.running)
        return erlang_quantile(ahead + 1) * (s.e2e.mean(now) or _DEFAULT_SERVICE_S) / slots

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
            ordered += self._within.order(req, group)[0] if len(group) > 1 else group
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
        if len(deployments) == 1:  # nothing to choose: predict only for the SLO (shedding)
            if slo is None:
                return Plan(list(deployments), self.name, "only deployment")
            dep = deployments[0]
            p = self.predicted_ttft(dep, self._board.clock(), hints.prompt_tokens)
            why = "only deployment" + (f", p99~{p * 1000:.0f}ms" if p is not None else "")
            return Plan([dep], self.name, why, {dep.id: -1.0 if p is None else p},
                        p is None or p <= slo, p)
        now = self._board.clock()
        pred = {d.id: self.predicted_ttft(d, now, hints.prompt_tokens) for d in deployments}
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
            return Plan([*ordered, *rest], self.name, why, scores, True, p)
        ordered = sorted(deployments, key=lambda d: pred[d.id] or 0.0)
        p = pred[ordered[0].id]
        assert slo is not None
        return Plan(ordered, self.name,
                    f"none meets ttft<={slo * 1000:.0f}ms: best predicted"
                    f" {(p or 0.0) * 1000:.0f}ms", scores, False, p)
