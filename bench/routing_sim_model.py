"""The routing simulation's world: an event loop on simulated time, simulated vLLM replicas
and priced providers, and a dispatcher that drives a REAL routing policy and reports to a
REAL `Scoreboard` exactly as `gateway/dispatch/` does.

Nothing sleeps and nothing listens on a socket: every latency is an event on a heap, and
the scoreboard reads the simulated clock, so a minute of traffic runs in well under a
second of wall time per policy.

Replicas follow `selfhost/sim_state.py`'s timing model (its `SimProfile` and `PrefixCache`
are reused): `max_num_seqs` slots handed out first come first served, TTFT = queue wait +
(base_ttft + prefill per uncached prompt token) x jitter, then one token per ITL. A slot
is held until the last token, as in the simulator, so slots are what saturates.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from bench.routing_sim_trace import TraceRecord
from gateway.canonical import CanonicalRequest, Deployment, Target, Usage
from policies.pricing import cost_nanos
from policies.routing import RouteHints, RoutingPolicy
from policies.scoreboard import DeploymentStats, Scoreboard
from selfhost.sim_state import PrefixCache, SimProfile

# ---------------------------------------------------------------------------------------------
# Simulated time


class EventLoop:
    """A heap of (time, tie-break, callback); `now` jumps from one event to the next."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def after(self, dt: float, fn: Callable[[], None]) -> None:
        self.at(self.now + dt, fn)

    def run(self) -> None:
        heap = self._heap
        while heap:
            self.now, _, fn = heapq.heappop(heap)
            fn()


# ---------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    name: str
    profile: SimProfile
    prefix_cache_entries: int = 6  # shared prefixes its spare KV memory keeps
    weight: float = 1.0  # for the weighted policy


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """An external API: effectively unbounded concurrency, log-normal TTFT, list prices."""

    name: str
    ttft_median_ms: float
    ttft_sigma: float
    prefill_ms_per_token: float
    itl_ms: float
    price_input: float  # USD per 1M tokens
    price_output: float
    max_concurrency: int = 1024  # beyond it: 429
    error_ms: float = 40.0  # how long an error answer takes
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Incident:
    """One provider turns `slow_factor` x slower at `slow_from`, answers 503 from
    `error_from`, and is healthy again at `until` (seconds of simulated time)."""

    provider: str
    slow_from: float
    error_from: float
    until: float
    slow_factor: float = 5.0

    def factor(self, t: float) -> float | None:
        """Latency multiplier at `t`; None while every request fails."""
        if self.error_from <= t < self.until:
            return None
        return self.slow_factor if self.slow_from <= t < self.error_from else 1.0


@dataclass(frozen=True, slots=True)
class Fleet:
    pool: str
    pool_price_input: float
    pool_price_output: float
    replicas: tuple[ReplicaSpec, ...]
    providers: tuple[ProviderSpec, ...]

    def deployments(self, model: str) -> list[Deployment]:
        deps = [Deployment(f"{self.pool}/{r.name}", model, "openai",
                           Target(f"http://{r.name}.sim/v1", model), self.pool_price_input,
                           self.pool_price_output, pool=self.pool, weight=r.weight)
                for r in self.replicas]
        deps += [Deployment(p.name, model, "openai", Target(f"https://{p.name}.sim/v1", model),
                            p.price_input, p.price_output, weight=p.weight)
                 for p in self.providers]
        return deps


# ---------------------------------------------------------------------------------------------
# Requests and attempts


@dataclass(slots=True)
class Outcome:
    """What the client saw for one trace record. Times are from its arrival."""

    rec: TraceRecord
    ttft: float | None = None
    e2e: float | None = None
    deployment: str | None = None  # where it was served (or last tried)
    attempts: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None


@dataclass(eq=False, slots=True)
class Attempt:
    outcome: Outcome
    candidates: list[Deployment]
    index: int  # of the candidate this attempt went to
    stats: DeploymentStats
    started: float
    first_at: float | None = None
    cached: int = 0
    done: bool = False

    @property
    def dep(self) -> Deployment:
        return self.candidates[self.index]


class Sink(Protocol):
    """How a backend tells the dispatcher what happened to an attempt."""

    def first_token(self, att: Attempt) -> None: ...
    def finished(self, att: Attempt) -> None: ...
    def errored(self, att: Attempt, reason: str) -> None: ...


class Backend(Protocol):
    def submit(self, att: Attempt) -> None: ...
    def cancel(self, att: Attempt) -> None: ...


# ---------------------------------------------------------------------------------------------
# Backends


def _jitter(rng: random.Random, jitter: float) -> float:
    return rng.uniform(1 - jitter, 1 + jitter)


class _Server:
    """What both kinds of backend share: the clock, the dispatcher, a seeded RNG."""

    def __init__(self, loop: EventLoop, sink: Sink, seed: int) -> None:
        self._loop = loop
        self._sink = sink
        self._rng = random.Random(seed)

    def _first(self, att: Attempt) -> None:
        if not att.done:  # else the gateway already gave up on it
            self._sink.first_token(att)


class Replica(_Server):
    """One vLLM replica: FIFO slots, a prefix cache, the simulator's latency formula."""

    def __init__(self, spec: ReplicaSpec, loop: EventLoop, sink: Sink, seed: int) -> None:
        super().__init__(loop, sink, seed)
        self.spec = spec
        self.profile = spec.profile
        self.cache = PrefixCache(spec.prefix_cache_entries)
        self.queue: deque[Attempt] = deque()
        self.running = 0
        self.prefix_hits = 0
        self.prefix_queries = 0
        self.completed = 0  # vLLM's request_success_total

    def submit(self, att: Attempt) -> None:
        if self.running < self.profile.max_num_seqs and not self.queue:
            self.running += 1
            self._start(att)
        else:
            self.queue.append(att)

    def cancel(self, att: Attempt) -> None:
        """The gateway gave up on it (first-token timeout): vLLM aborts it."""
        if att in self.queue:
            self.queue.remove(att)
        else:
            self._release()

    def _start(self, att: Attempt) -> None:
        rec, p = att.outcome.rec, self.profile
        if rec.prefix_id is not None and rec.prefix_tokens:
            shared = min(rec.prefix_tokens, rec.prompt_tokens)
            att.cached = self.cache.lookup_insert([[(rec.prefix_id.encode(), shared)]])
        self.prefix_hits += att.cached
        self.prefix_queries += rec.prompt_tokens
        prefill = p.base_ttft_ms + p.prefill_ms_per_token * (rec.prompt_tokens - att.cached)
        ttft = prefill * _jitter(self._rng, p.jitter) / 1000
        # One draw for the whole decode, narrower: many per-token draws would average out.
        decode = p.itl_ms * (rec.output_tokens - 1) * _jitter(self._rng, p.jitter / 4) / 1000
        self._loop.after(ttft, lambda: self._first(att))
        self._loop.after(ttft + decode, lambda: self._finish(att))

    def _finish(self, att: Attempt) -> None:
        if att.done:  # cancelled: its slot was already released
            return
        self.completed += 1
        self._release()
        self._sink.finished(att)

    def _release(self) -> None:
        if self.queue:  # the slot passes straight to the oldest waiter
            self._start(self.queue.popleft())
        else:
            self.running -= 1

    def scrape_into(self, stats: DeploymentStats, now: float) -> None:
        """What the pool monitor's `/metrics` scrape would record now."""
        stats.record_scrape(
            waiting=float(len(self.queue)), running=float(self.running),
            # Slot occupancy stands in for KV usage: the model has no KV memory of its own.
            kv_usage=self.running / self.profile.max_num_seqs,
            prefix_hit_rate=self.prefix_hits / self.prefix_queries if self.prefix_queries
            else None, now=now, completed=float(self.completed))
        stats.record_health(True, now)


class Provider(_Server):
    """An external API with an optional incident; no prefix caching is modelled."""

    def __init__(self, spec: ProviderSpec, loop: EventLoop, sink: Sink, seed: int,
                 incident: Incident | None) -> None:
        super().__init__(loop, sink, seed)
        self.spec = spec
        self.in_flight = 0
        self._incident = incident if incident and incident.provider == spec.name else None

    def submit(self, att: Attempt) -> None:
        s = self.spec
        factor = self._incident.factor(self._loop.now) if self._incident else 1.0
        if factor is None or self.in_flight >= s.max_concurrency:
            reason = "HTTP 503" if factor is None else "HTTP 429"
            self._loop.after(s.error_ms / 1000, lambda: self._error(att, reason))
            return
        self.in_flight += 1
        rec = att.outcome.rec
        ttft = (self._rng.lognormvariate(math.log(s.ttft_median_ms), s.ttft_sigma)
                + s.prefill_ms_per_token * rec.prompt_tokens) * factor / 1000
        decode = s.itl_ms * (rec.output_tokens - 1) * factor * _jitter(self._rng, 0.05) / 1000
        self._loop.after(ttft, lambda: self._first(att))
        self._loop.after(ttft + decode, lambda: self._finish(att))

    def cancel(self, att: Attempt) -> None:
        self.in_flight -= 1

    def _finish(self, att: Attempt) -> None:
        if not att.done:
            self.in_flight -= 1
            self._sink.finished(att)

    def _error(self, att: Attempt, reason: str) -> None:
        if not att.done:
            self._sink.errored(att, reason)


# ---------------------------------------------------------------------------------------------
# The dispatcher


@dataclass(frozen=True, slots=True)
class Slo:
    """A request meets its SLO when its first token comes within `ttft_s` of arrival and
    its last within `ttft_s + tpot_s x output tokens` (a TTFT plus a per-token budget)."""

    ttft_s: float = 0.5
    tpot_s: float = 0.05

    def e2e_s(self, output_tokens: int) -> float:
        return self.ttft_s + self.tpot_s * output_tokens


@dataclass(frozen=True, slots=True)
class DispatchRules:
    slo: Slo = Slo()
    first_token_timeout_s: float = 60.0  # the gateway's default `timeouts.first_token_s`
    failover: bool = False  # retry a failed attempt on the plan's next candidate
    few_shot: bool = False  # shared prefix = system prompt + an example exchange


def chat_request(i: int, rec: TraceRecord, few_shot: bool) -> CanonicalRequest:
    """A streamed chat whose system prompt is shared when the record has a `prefix_id`;
    `few_shot` adds a shared example exchange after it (part of the same prefix)."""
    system = f"shared system prompt {rec.prefix_id}" if rec.prefix_id else f"prompt {i}"
    messages = [{"role": "system", "content": system}]
    if few_shot and rec.prefix_id:
        messages += [{"role": "user", "content": f"example question {rec.prefix_id}"},
                     {"role": "assistant", "content": f"example answer {rec.prefix_id}"}]
    messages.append({"role": "user", "content": f"question {i}"})
    body = {"model": rec.model, "messages": messages, "stream": True,
            "max_tokens": rec.output_tokens}
    return CanonicalRequest("chat", rec.model, body, stream=True, request_id=str(i))


class SimDispatch:
    """Plan with the policy, send the first candidate, report every attempt to the board
    as `gateway/dispatch/` does (started, first_token, succeeded / failed)."""

    def __init__(self, loop: EventLoop, board: Scoreboard, policy: RoutingPolicy,
                 deployments: Sequence[Deployment], rules: DispatchRules) -> None:
        self.loop = loop
        self.board = board
        self.policy = policy
        self.deployments = list(deployments)
        self.rules = rules
        self.backends: dict[str, Backend] = {}
        self.outstanding = 0

    def arrive(self, i: int, out: Outcome) -> None:
        rec = out.rec
        self.outstanding += 1
        hints = RouteHints(self.rules.slo.ttft_s, rec.prompt_tokens, rec.output_tokens)
        plan = self.policy.plan(chat_request(i, rec, self.rules.few_shot), self.deployments,
                                hints)
        self._attempt(out, plan.candidates, 0)

    def _attempt(self, out: Outcome, candidates: list[Deployment], index: int) -> None:
        dep = candidates[index]
        att = Attempt(out, candidates, index, self.board.started(dep), self.loop.now)
        out.attempts += 1
        out.deployment = dep.id
        self.backends[dep.id].submit(att)
        self.loop.after(self.rules.first_token_timeout_s, lambda: self._deadline(att))

    def _deadline(self, att: Attempt) -> None:
        if att.done or att.first_at is not None:
            return
        self.backends[att.dep.id].cancel(att)
        self._fail(att, f"no first token within {self.rules.first_token_timeout_s:g}s",
                   timeout=True)

    def first_token(self, att: Attempt) -> None:
        now = self.loop.now
        att.first_at = now
        self.board.first_token(att.stats, now - att.started, att.outcome.rec.prompt_tokens)
        att.outcome.ttft = now - att.outcome.rec.t

    def finished(self, att: Attempt) -> None:
        now, out, rec = self.loop.now, att.outcome, att.outcome.rec
        att.done = True
        e2e = now - att.started
        assert att.first_at is not None
        itl = (now - att.first_at) / (rec.output_tokens - 1) if rec.output_tokens > 1 else None
        self.board.succeeded(att.stats, e2e_s=e2e, streamed=True, itl_s=itl)
        out.e2e = now - rec.t
        out.cached_tokens = att.cached
        usage = Usage(rec.prompt_tokens, rec.output_tokens, att.cached)
        out.cost_usd = cost_nanos(att.dep, usage) / 1e9
        self.outstanding -= 1

    def errored(self, att: Attempt, reason: str) -> None:
        self._fail(att, reason, timeout=False)

    def _fail(self, att: Attempt, reason: str, *, timeout: bool) -> None:
        att.done = True
        self.board.failed(att.stats, reason, timeout=timeout, upstream_fault=True)
        nxt = att.index + 1
        if self.rules.failover and nxt < len(att.candidates):
            self._attempt(att.outcome, att.candidates, nxt)
            return
        att.outcome.error = reason
        self.outstanding -= 1


# ---------------------------------------------------------------------------------------------
# One run

# The gateway's clock is time.monotonic(): seconds since boot, never near 0. The
# scoreboard's estimators weigh their first observation by the time since 0 (DecayingRate
# takes the first outcome at full weight on a large clock, at a tenth near 0), so the
# simulated board reads the clock a day into uptime, as a real one would.
BOARD_CLOCK_ORIGIN = 86_400.0


@dataclass(slots=True)
class RunOutput:
    outcomes: list[Outcome]
    board: Scoreboard
    replicas: dict[str, Replica]


def simulate(fleet: Fleet, trace: Sequence[TraceRecord], make: Callable[[Scoreboard],
             RoutingPolicy], rules: DispatchRules, incident: Incident | None,
             seed: int, scrape_every_s: float = 1.0) -> RunOutput:
    """Replay `trace` against a fresh fleet, board and policy; every run with the same
    arguments gives the same outcomes."""
    loop = EventLoop()
    board = Scoreboard(clock=lambda: loop.now + BOARD_CLOCK_ORIGIN)
    model = trace[0].model if trace else "chat"
    deps = fleet.deployments(model)
    sim = SimDispatch(loop, board, make(board), deps, rules)
    replicas: dict[str, Replica] = {}
    for k, (dep, spec) in enumerate(zip(deps, fleet.replicas, strict=False)):
        replicas[dep.id] = Replica(spec, loop, sim, seed * 1000 + k)
    sim.backends.update(replicas)
    for k, pspec in enumerate(fleet.providers):
        sim.backends[pspec.name] = Provider(pspec, loop, sim, seed * 1000 + 100 + k, incident)
    outcomes = [Outcome(rec) for rec in trace]
    for i, out in enumerate(outcomes):
        loop.at(out.rec.t, partial(sim.arrive, i, out))
    last = trace[-1].t if trace else 0.0
    _scrape(loop, board, replicas, deps, sim, last, scrape_every_s)
    loop.run()
    return RunOutput(outcomes, board, replicas)


def _scrape(loop: EventLoop, board: Scoreboard, replicas: dict[str, Replica],
            deps: Sequence[Deployment], sim: SimDispatch, last: float, every: float) -> None:
    """The pool monitor: every `every` seconds, each replica's `/metrics` into the board;
    it stops once the last request has arrived and finished, so the heap drains."""
    for dep in deps:
        rep = replicas.get(dep.id)
        if rep is not None:
            stats = board.stats(dep)
            rep.scrape_into(stats, board.clock())
    if loop.now < last or sim.outstanding:
        loop.after(every, lambda: _scrape(loop, board, replicas, deps, sim, last, every))
