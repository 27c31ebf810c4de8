"""Prometheus metrics, served at `GET /metrics`.

Recorded once per request where it settles (plus in-flight at admission), from
label children bound once per (model, deployment): the hot path does a dict lookup and a
few increments, no label resolution. Failover counters and circuit states live in
`gateway.dispatch.failover` as plain integers; they are copied into Prometheus as requests settle
and again at each scrape, so dispatch carries no metrics code.

Several uvicorn workers: `turnout serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before spawning them, each worker writes its values there (prometheus_client's multiprocess
mode), and a scrape of any worker adds up all of them.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.accounting.metering import Outcome, RequestContext
from gateway.cache import BYPASS, HIT, MISS
from gateway.dispatch.failover import Failover, FailoverCounters
from gateway.store import SettleArgs, StoreUnavailable
from gateway.wire.base import Arg, Command, Keys, RedisConnection, Script, ScriptCall

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Buckets from the OpenTelemetry GenAI conventions (seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
DURATION_BUCKETS = tuple(0.01 * 2 ** i for i in range(14))  # 0.01 … 81.92
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# The gateway's own time and Redis round trips are sub-millisecond when healthy.
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                1.0)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
_BREAKER_SYNC_S = 0.25  # circuit states are copied at most this often (and at each scrape)


class _Series:
    """One (model, deployment)'s children, bound once."""

    __slots__ = ("by_status", "cost", "duration", "input", "output", "tpot", "ttft")

    def __init__(self, m: Metrics, model: str, deployment: str) -> None:
        self.by_status: dict[int, Any] = {}
        self.duration = m.duration.labels(model, deployment)
        self.ttft = m.ttft.labels(model, deployment)
        self.tpot = m.tpot.labels(model, deployment)
        self.input = m.tokens.labels(model, deployment, "input")
        self.output = m.tokens.labels(model, deployment, "output")
        self.cost = m.cost.labels(model, deployment)


class Metrics:
    def __init__(self, models: Iterable[str], failover: Failover | None) -> None:
        disable_created_metrics()  # no `_created` twin of every series: half the scrape
        folder = os.environ.get(MULTIPROC_ENV)
        self.multiprocess = bool(folder)
        if folder:  # its files are made as values are: the folder must be there
            os.makedirs(folder, exist_ok=True)
        self.registry = r = CollectorRegistry()
        self.models = frozenset(models)
        md = ["model", "deployment"]
        self.requests = Counter("turnout_requests", "Requests answered, by HTTP status",
                                [*md, "status"], registry=r)
        self.in_flight = Gauge("turnout_requests_in_flight", "Admitted requests not yet settled",
                               ["model"], registry=r, multiprocess_mode="livesum")
        self.duration = Histogram("turnout_request_duration_seconds",
                                  "End-to-end request time in the gateway", md,
                                  registry=r, buckets=DURATION_BUCKETS)
        self.ttft = Histogram("turnout_time_to_first_token_seconds",
                              "Streams: arrival to first byte sent to the client", md,
                              registry=r, buckets=TTFT_BUCKETS)
        self.tpot = Histogram("turnout_time_per_output_token_seconds",
                              "Streams: inter-token latency after the first token", md,
                              registry=r, buckets=TPOT_BUCKETS)
        self.overhead = Histogram(
            "turnout_gateway_overhead_seconds",
            "Time in the gateway until the response started, less the time dispatch waited"
            " on upstreams", registry=r, buckets=FAST_BUCKETS)
        self.tokens = Counter("turnout_tokens", "Tokens metered", [*md, "type"], registry=r)
        self.cost = Counter("turnout_cost_usd", "Cost metered (USD)", md, registry=r)
        self.cache = Counter("turnout_cache_lookups", "Response cache lookups",
                             ["model", "result"], registry=r)
        self.failover = Counter("turnout_failover_events", "Failover events",
                                ["event"], registry=r)
        self.circuit = Gauge("turnout_circuit_state",
                             "Circuit breaker: 0 closed, 1 half-open, 2 open (worst worker)",
                             ["deployment"], registry=r, multiprocess_mode="livemax")
        self.redis_duration = Histogram("turnout_redis_duration_seconds",
                                        "Redis round trips, by store operation", ["op"],
                                        registry=r, buckets=FAST_BUCKETS)
        self.redis_errors = Counter("turnout_redis_errors", "Redis unavailable, by operation",
                                    ["op"], registry=r)
        self.leased = Counter("turnout_lease_admissions",
                              "Requests admitted from a lease, without a Redis round trip",
                              registry=r)
        # Bound for every model, so all three export (at 0) before the first lookup.
        self._cache = {(model, outcome): self.cache.labels(model, outcome.decode())
                       for model in self.models for outcome in (HIT, MISS, BYPASS)}
        self._series: dict[tuple[str, str], _Series] = {}
        self._in_flight = {model: self.in_flight.labels(model) for model in self.models}
        self._fo = failover
        self._events = [(f.name, self.failover.labels(f.name.removesuffix("_total")))
                        for f in fields(FailoverCounters)]
        self._seen = dict.fromkeys((name for name, _ in self._events), 0)
        self._breakers_at = 0.0

    def _of(self, model: str, deployment: str) -> _Series:
        series = self._series.get((model, deployment))
        if series is None:
            series = self._series[(model, deployment)] = _Series(self, model, deployment)
        return series

    def admitted(self, ctx: RequestContext) -> None:
        self._in_flight[ctx.req.model].inc()
        if ctx.from_lease:
            self.leased.inc()

    def settled(self, ctx: RequestContext, out: Outcome, args: SettleArgs, now: float) -> None:
        req = ctx.req
        dep = out.deployment.id if out.deployment is not None else ""
        s = self._of(req.model, dep)
        status = out.status
        counter = s.by_status.get(status)
        if counter is None:
            counter = s.by_status[status] = self.requests.labels(req.model, dep, str(status))
        counter.inc()
        elapsed = now - out.started
        s.duration.observe(elapsed)
        first = out.first_byte
        if req.stream and first is not None:
            ttft = first - out.started
            s.ttft.observe(ttft)
            if args.completion_tokens > 1:
                s.tpot.observe((elapsed - ttft) / (args.completion_tokens - 1))
        if out.upstream_s:
            self.overhead.observe(max(0.0, (first or now) - out.started - out.upstream_s))
        if args.prompt_tokens:
            s.input.inc(args.prompt_tokens)
        if args.completion_tokens:
            s.output.inc(args.completion_tokens)
        if args.cost_nanos:
            s.cost.inc(args.cost_nanos / 1e9)
        if out.cache is not None:
            self._cache[(req.model, out.cache)].inc()
        if self._fo is not None:
            self._sync(now)
        # Last: a reader that sees nothing in flight sees every count above complete.
        self._in_flight[req.model].dec()

    def refused(self, model: str | None, status: int) -> None:
        """A request answered before admission (401, 429, 400, ...)."""
        label = model if model in self.models else ""
        self.requests.labels(label, "", str(status)).inc()

    def _sync(self, now: float) -> None:
        """Copy this process's failover counters (and, now and then, circuit states)."""
        fo = self._fo
        assert fo is not None
        counters, seen = fo.counters, self._seen
        for name, child in self._events:
            value = getattr(counters, name)
            if value != seen[name]:
                child.inc(value - seen[name])
                seen[name] = value
        if now >= self._breakers_at:
            self._breakers_at = now + _BREAKER_SYNC_S
            for dep, snap in fo.breakers.snapshot().items():
                self.circuit.labels(dep).set(CIRCUIT_STATES[snap["state"]])

    def render(self) -> bytes:
        if self._fo is not None:
            self._breakers_at = 0.0
            self._sync(time.monotonic())
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # every worker's files, added up
        return generate_latest(merged)


def multiprocess_dir() -> str | None:
    """Before spawning workers: a fresh folder for their metric files, set in the
    environment they inherit. Returns it for removal at exit; None when the operator set
    PROMETHEUS_MULTIPROC_DIR (then only stale files from an earlier run are removed)."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return None
    folder = tempfile.mkdtemp(prefix="turnout-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder




class MeasuredConnection:
    """A Redis connection whose every round trip is timed (and its outages counted), by
    operation: the script's name, or the command's. The store stays unaware of metrics."""

    def __init__(self, inner: RedisConnection, metrics: Metrics) -> None:
        self._inner = inner
        self._duration = metrics.redis_duration
        self._errors = metrics.redis_errors
        # Each operation's histogram child, looked up once (labels() takes a lock each call).
        self._timers: dict[str, Any] = {}
        self.subscription = inner.subscription
        self.close = inner.close

    async def execute(self, *args: Arg) -> Any:
        op = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        return await self._timed(op.lower(), self._inner.execute(*args))

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        return await self._timed(script.name, self._inner.evalsha(script, keys, args,
                                                                   once=once))

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        first = commands[0] if commands else None
        op = first.script.name if isinstance(first, ScriptCall) else "pipeline"
        replies: list[Any] = await self._timed(op, self._inner.execute_many(commands))
        return replies

    async def _timed(self, op: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        except StoreUnavailable:
            self._errors.labels(op).inc()
            raise
        finally:
            timer = self._timers.get(op)
            if timer is None:
                timer = self._timers[op] = self._duration.labels(op)
            timer.observe(time.perf_counter() - started)
