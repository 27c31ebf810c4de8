"""Self-hosted vLLM pools: membership (static or DNS), `/health` probes and `/metrics`
scrapes, written into the scoreboard that routing reads.

A failed scrape marks the replica's numbers stale (routing then ignores its queue), it
does not mark the replica dead: only `/health` says that. DNS membership is re-resolved
periodically so a Kubernetes headless Service (one A record per ready pod) just works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception

from policies.scoreboard import DeploymentStats

# GET a URL within a timeout: (status, body), or None when it cannot be had in time.
Fetch = Callable[[str, float], Awaitable[tuple[int, bytes] | None]]

log = logging.getLogger("turnout.pool")

_TIMEOUT_S = 1.0
_RECHECK_TIMEOUT_S = 0.5

# Current vLLM (v1) names first, then the older names of the same quantities.
_WAITING = ("vllm:num_requests_waiting",)
_RUNNING = ("vllm:num_requests_running",)
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
_PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
_COMPLETED = ("vllm:request_success_total",)  # summed over its finished_reason labels


@dataclass(slots=True)
class VllmMetrics:
    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    completed: float | None = None


def parse_vllm_metrics(text: str) -> VllmMetrics:
    """Sum each quantity over its label sets (one per model/engine) from Prometheus text."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i > 0), default=-1)
        if name_end < 0:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
        name = line[:name_end]
        values[name] = values.get(name, 0.0) + value

    def first(names: tuple[str, ...]) -> float | None:
        return next((values[n] for n in names if n in values), None)

    return VllmMetrics(
        waiting=first(_WAITING) or 0.0,
        running=first(_RUNNING) or 0.0,
        kv_usage=first(_KV) or 0.0,
        prefix_queries=first(_PREFIX_QUERIES),
        prefix_hits=first(_PREFIX_HITS),
        completed=first(_COMPLETED),
    )


async def resolve(endpoint: str, resolver: str | None) -> list[str]:
    """`dns://name:port` → the server roots of every A record (sorted); [] on failure."""
    parts = urlsplit(endpoint)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{endpoint}: expected dns://name:port")
    res = dns.asyncresolver.Resolver(configure=resolver is None)
    if resolver is not None:
        host, _, port = resolver.rpartition(":")
        res.nameservers = [host]
        res.port = int(port)
    res.lifetime = _TIMEOUT_S * 2
    try:
        answer = await res.resolve(parts.hostname, "A")
    except dns.exception.DNSException as err:
        log.warning("resolving %s failed: %s", endpoint, type(err).__name__)
        return []
    return sorted(f"http://{rr.address}:{parts.port}" for rr in answer)


@dataclass(slots=True, frozen=True)
class PoolSpec:
    name: str
    endpoints: tuple[str, ...]  # server roots and/or dns://name:port
    resolver: str | None = None  # DNS server host:port; None: the system's
    dns_interval_s: float = 10.0
    probe_interval_s: float = 2.0
    scrape_interval_s: float = 1.0
    # A replica in trouble (a failed probe, scrapes failing) is probed and scraped this
    # often, so routing has it back within a moment of its recovery.
    recheck_interval_s: float = 0.25
    # The replicas' vLLM max_num_seqs, if the operator says: routing's capacity until a
    # scrape shows a queue and it is learned (policies/scoreboard.py, PoolTelemetry).
    max_num_seqs: int | None = None


class PoolMonitor:
    """Background tasks for one pool: DNS membership, health probes, metrics scrapes.

    `fetch` does the HTTP GETs, `members()` gives the current server roots,
    `on_members(roots)` reports a change, `stats(root)` is where a replica's telemetry
    goes, `clock` stamps scrapes, `on_recovered(root)` hears that a replica in trouble
    (down to probes or scrapes) answers both again, the moment the monitor sees it.
    """

    def __init__(self, pool: PoolSpec, fetch: Fetch, *,
                 members: Callable[[], list[str]], on_members: Callable[[list[str]], None],
                 stats: Callable[[str], DeploymentStats], clock: Callable[[], float],
                 on_recovered: Callable[[str], None] | None = None) -> None:
        self.pool = pool
        self._fetch = fetch
        self._members = members
        self._on_members = on_members
        self._stats = stats
        self._clock = clock
        self._on_recovered = on_recovered
        self._tasks: list[asyncio.Task[None]] = []
        self._prefix_last: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        loops = [(self.scrape_all, self.pool.scrape_interval_s),
                 (self.probe_all, self.pool.probe_interval_s),
                 (self.recheck_troubled, self.pool.recheck_interval_s)]
        if any(e.startswith("dns://") for e in self.pool.endpoints):
            loops.insert(0, (self.refresh_members, self.pool.dns_interval_s))
        self._tasks = [asyncio.create_task(self._every(fn, s)) for fn, s in loops]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    async def _every(fn: Callable[[], Awaitable[None]], interval_s: float) -> None:
        while True:
            try:
                await fn()
            except Exception:  # a monitor must outlive any one bad round
                log.exception("pool monitor round failed")
            await asyncio.sleep(interval_s)

    async def refresh_members(self) -> None:
        roots: set[str] = set()
        for endpoint in self.pool.endpoints:
            if endpoint.startswith("dns://"):
                roots.update(await resolve(endpoint, self.pool.resolver))
            else:
                roots.add(endpoint)
        if sorted(roots) != self._members():
            log.info("pool %s members: %s", self.pool.name, ", ".join(sorted(roots)) or "none")
            self._on_members(sorted(roots))

    async def _get(self, url: str, timeout_s: float = _TIMEOUT_S) -> tuple[int, str] | None:
        got = await self._fetch(url, timeout_s)
        return None if got is None else (got[0], got[1].decode(errors="replace"))

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(root) for root in self._members()))

    def _replica(self, root: str) -> DeploymentStats:
        stats = self._stats(root)
        tele = stats.pool
        if not tele.capacity_learned and self.pool.max_num_seqs is not None:
            tele.capacity = float(self.pool.max_num_seqs)
        return stats

    async def probe(self, root: str, timeout_s: float = _TIMEOUT_S) -> None:
        got = await self._get(root + "/health", timeout_s)
        stats = self._replica(root)
        troubled = stats.pool.trouble_from is not None
        stats.record_health(got is not None and got[0] == 200, self._clock())
        self._recovered(root, stats, troubled)

    def _recovered(self, root: str, stats: DeploymentStats, troubled: bool) -> None:
        """After a probe or scrape of a replica `troubled` before it: tell `on_recovered`
        if that ended the incident (the last of the two to answer again does)."""
        if troubled and stats.pool.trouble_from is None and self._on_recovered is not None:
            self._on_recovered(root)

    async def recheck_troubled(self) -> None:
        """Probe and scrape, on a short timeout, the replicas in trouble only."""
        troubled = [root for root in self._members()
                    if (p := self._stats(root).pool).trouble_from is not None
                    or p.healthy is False]
        await asyncio.gather(*(self.probe(root, _RECHECK_TIMEOUT_S) for root in troubled),
                             *(self.scrape(root, _RECHECK_TIMEOUT_S) for root in troubled))

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self.scrape(root) for root in self._members()))

    async def scrape(self, root: str, timeout_s: float = _TIMEOUT_S) -> None:
        stats = self._replica(root)
        got = await self._get(root + "/metrics", timeout_s)
        tele = stats.pool
        if got is None or got[0] != 200:
            stats.scrape_failed()
            return
        troubled = tele.trouble_from is not None
        m = parse_vllm_metrics(got[1])
        hit_rate = tele.prefix_hit_rate
        if m.prefix_queries is not None and m.prefix_hits is not None:
            last_q, last_h = self._prefix_last.get(root, (m.prefix_queries, m.prefix_hits))
            dq = m.prefix_queries - last_q
            hit_rate = (m.prefix_hits - last_h) / dq if dq > 0 else None
            self._prefix_last[root] = (m.prefix_queries, m.prefix_hits)
        stats.record_scrape(waiting=m.waiting, running=m.running, kv_usage=m.kv_usage,
                            prefix_hit_rate=hit_rate, now=self._clock(), completed=m.completed)
        self._recovered(root, stats, troubled)
