"""A request's way through its candidates once its first choice failed or could not be
used (or it hedges): `Run`.

- retryable failures (connect, timeout, 429, 5xx, and what an adapter calls retryable)
  move to the next candidate of the plan at once (backing off protects the upstream that
  failed, and this is another one), then to the model's `fallbacks`, each deployment at
  most once per pass; further passes (`rounds`) wait a full-jitter backoff, at least the
  upstream's Retry-After;
- deployments whose circuit is open, or that asked for a pause, are skipped; when that
  leaves nothing at all, the least-bad open one is tried rather than failing at once;
- every attempt after the first is a retry the retry budget must allow;
- a context-length error goes to the model's `context_window_fallback`; other final
  errors (content policy, bad request) are the client's answer, never retried; but a
  401/402/403/404 says the deployment's key or model name is wrong, so it fails over;
- what happened is appended to the plan's reason, which `x-turnout-route` shows.

The loop is a plain one rather than tenacity: each retry goes to a different deployment,
the stop condition is the plan, the budget and the breakers together, and tenacity's
per-call retry state would cost every request, failing or not.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from gateway.canonical import CanonicalRequest, Deployment, FailureKind, UpstreamFailure
from gateway.dispatch.attempts import AttemptRecord, Segment, final
from gateway.dispatch.failover import Failover
from gateway.dispatch.hedging import HedgeSettings, hedge_delay, race
from policies.breakers import CircuitState, Pass
from policies.retries import wait_before
from policies.routing.base import Plan

T = TypeVar("T")
Op = Callable[[CanonicalRequest, Deployment, bool], Awaitable[T]]
Candidate = tuple[CanonicalRequest, Deployment]
_MAX_NOTES = 8  # what x-turnout-route shows of one request's failover
_TIMER_TICK_S = 0.002


class Run(Generic[T]):
    """One request's way through its candidates once its first choice failed or could not
    be used (or it hedges). Made only then, so the success path never builds one."""

    def __init__(self, fo: Failover, req: CanonicalRequest, plan: Plan, *,
                 skipped: Deployment | None = None, tried: Iterable[str] = (),
                 annotate: bool = True) -> None:
        self.fo = fo
        self.plan = plan
        self.tried = set(tried)
        self.history: list[AttemptRecord] = []
        self.winner: AttemptRecord | None = None
        self.notes: list[str] = []
        self.attempts = 0
        self.failure: UpstreamFailure | None = None
        self._origin = req
        self._annotate = annotate
        self._queue: deque[Candidate] = deque((req, d) for d in plan.candidates)
        self._all: list[Candidate] = list(self._queue)
        self._chain = deque(fo.fallbacks.chain(req.model))
        self._models = {req.model}
        self._skipped: list[Candidate] = []
        self._round = 1
        if skipped is not None:  # the caller asked its breaker already: the answer was no
            self._queue.popleft()
            self._skip(req, skipped)

    def first_failed(self, dep: Deployment, failure: UpstreamFailure) -> None:
        """The caller's own first attempt failed (raises when nothing can follow it)."""
        self.attempts = 1
        self.tried.add(dep.id)
        self._queue.popleft()
        self._failed(dep, failure)

    async def drive(self, op: Op[T], *, hedge: HedgeSettings | None = None,
                    only: Callable[[Deployment], bool] | None = None,
                    retry_first: bool = False) -> T:
        """Attempts until one succeeds; raises the last failure when none can.
        `only` limits the deployments; `retry_first`: the first attempt is a retry too."""
        try:
            return await self._drive(op, hedge, only, retry_first)
        finally:
            if self._annotate and self.notes:
                notes = self.notes
                if len(notes) > _MAX_NOTES:  # a big pool all open must not bloat a header
                    notes = [*notes[:_MAX_NOTES - 1], f"... {len(notes) - _MAX_NOTES + 1} more"]
                self.plan.reason += "; " + "; ".join(notes)

    async def _drive(self, op: Op[T], hedge: HedgeSettings | None,
                     only: Callable[[Deployment], bool] | None, retry_first: bool) -> T:
        fo = self.fo
        while True:
            if self.attempts >= fo.max_attempts:
                self.notes.append(f"gave up after {self.attempts} attempts")
                raise self._exhausted()
            nxt = self._next(only)
            if nxt is None:
                nxt = await self._next_round(only) if self.attempts else self._least_bad(only)
                if nxt is None:
                    raise self._exhausted()
            r, dep, probe = nxt
            if (self.attempts or retry_first) and not fo.budget.try_retry():
                fo.breakers.get(dep).release(probe)
                self.notes.append("retry budget exhausted")
                raise self._exhausted()
            if self.attempts:
                fo.counters.failovers_total += 1
            self.attempts += 1
            self.tried.add(dep.id)
            try:
                if hedge is not None and self.attempts == 1:
                    return await self._hedged(op, r, dep, probe, hedge)
                return await self._tracked(op, r, dep, probe)
            except UpstreamFailure as failure:
                if final(failure):
                    self._final(failure)

    async def _tracked(self, op: Op[T], r: CanonicalRequest, dep: Deployment,
                       probe: bool) -> T:
        try:
            result = await op(r, dep, probe)
        except UpstreamFailure as failure:
            self._failed(dep, failure, final_check=False)
            raise
        except asyncio.CancelledError:
            self.history.append(AttemptRecord(dep, "cancelled"))  # a hedge that lost
            raise
        self.winner = AttemptRecord(dep, "ok")
        self.history.append(self.winner)
        return result

    def _failed(self, dep: Deployment, failure: UpstreamFailure,
                final_check: bool = True) -> None:
        self.failure = failure
        self.history.append(AttemptRecord(dep, "failed"))
        self.notes.append(f"{dep.id} failed ({failure.status or failure.kind.value})")
        if final_check and final(failure):
            self._final(failure)

    def _final(self, failure: UpstreamFailure) -> None:
        """A final failure ends the run, unless it is a context-length error and the model
        has a larger-context fallback: then that model's deployments are next."""
        if failure.kind is FailureKind.CONTEXT_LENGTH:
            model = self.fo.fallbacks.context_model(self._origin.model)
            if model is not None and model not in self._models:
                self._queue.clear()
                self._chain.clear()
                if self._stage(model, "context window fallback"):
                    return
        raise failure

    def _next(self, only: Callable[[Deployment], bool] | None,
              fall_back: bool = True) -> tuple[CanonicalRequest, Deployment, bool] | None:
        now = self.fo.clock()
        while True:
            while self._queue:
                r, dep = self._queue.popleft()
                if dep.id in self.tried or (only is not None and not only(dep)):
                    continue
                verdict = self.fo.breakers.get(dep).admit(now)
                if verdict:
                    return r, dep, verdict is Pass.PROBE
                self._skip(r, dep)
            if not fall_back or not self._fall_back():
                return None

    def _skip(self, r: CanonicalRequest, dep: Deployment) -> None:
        self._skipped.append((r, dep))
        b = self.fo.breakers.get(dep)
        why = "circuit open" if b.state is not CircuitState.CLOSED else "asked to wait"
        self.notes.append(f"{dep.id} skipped ({why})")

    def _fall_back(self) -> bool:
        while self._chain:
            model = self._chain.popleft()
            if model not in self._models and self._stage(model, "fallback"):
                return True
        return False

    def _stage(self, model: str, why: str) -> bool:
        self._models.add(model)
        planned = self.fo.fallbacks.plan(self._origin, model)
        if planned is None:
            return False
        r, plan = planned
        stage = [(r, d) for d in plan.candidates]
        self._queue.extend(stage)
        self._all += stage
        self.fo.counters.fallbacks_total += 1
        self.notes.append(f"{why} to {model}")
        return True

    async def _next_round(self, only: Callable[[Deployment], bool] | None
                          ) -> tuple[CanonicalRequest, Deployment, bool] | None:
        """Start another pass over every candidate after a backoff, if rounds remain."""
        fo = self.fo
        if self._round >= fo.rounds:
            return None
        retry_after = self.failure.retry_after if self.failure is not None else None
        wait = wait_before(self._round - 1, retry_after, fo.backoff, fo.rng)
        if wait is None:
            self.notes.append("Retry-After too long to wait for")
            return None
        self._round += 1
        self.tried.clear()
        self._skipped.clear()
        self._queue = deque(self._all)
        self.notes.append(f"pass {self._round} after {wait * 1000:.0f}ms")
        # A timer may fire a tick early (uvloop counts milliseconds): the margin makes sure
        # a Retry-After block is over when the breakers are asked again.
        await asyncio.sleep(wait + _TIMER_TICK_S)
        return self._next(only, fall_back=False)

    def _least_bad(self, only: Callable[[Deployment], bool] | None
                   ) -> tuple[CanonicalRequest, Deployment, bool] | None:
        """Every deployment is skipped (circuit open, or Retry-After not over yet): try
        the one closest to being ready rather than refusing on the gateway's own say-so
        what an upstream may well serve; the retry budget still bounds the load."""
        eligible = [(r, d) for r, d in self._skipped if only is None or only(d)]
        dep = self.fo.breakers.least_bad(d for _, d in eligible)
        if dep is None:
            return None
        r = next(r for r, d in eligible if d is dep)
        self.fo.counters.least_bad_total += 1
        self.notes.append(f"all skipped: trying the least bad, {dep.id}")
        return r, dep, True  # as its circuit's probe: the outcome decides the circuit

    def _exhausted(self) -> UpstreamFailure:
        if self.failure is not None:
            return self.failure
        return UpstreamFailure(FailureKind.CONNECT, "no other deployment is available")

    async def _hedged(self, op: Op[T], r: CanonicalRequest, dep: Deployment, probe: bool,
                      hedge: HedgeSettings) -> T:
        fo = self.fo
        delay = hedge_delay(fo.board, [dep, *(d for _, d in self._queue)], hedge)
        hedged_to: list[Deployment] = []

        def launch() -> Awaitable[T] | None:
            nxt = self._next(None, fall_back=False)
            if nxt is None:
                return None
            if self.attempts >= fo.max_attempts or not fo.budget.try_retry():
                fo.breakers.get(nxt[1]).release(nxt[2])
                self._queue.appendleft((nxt[0], nxt[1]))
                self.notes.append("not hedged: retry budget exhausted")
                return None
            self.attempts += 1
            self.tried.add(nxt[1].id)
            fo.counters.hedges_total += 1
            hedged_to.append(nxt[1])
            return self._tracked(op, *nxt)

        def discard(loser: T) -> None:
            if isinstance(loser, Segment):  # answered in the same instant as the winner
                loser.discard()
                for rec in self.history:
                    if rec.outcome == "ok" and rec.deployment is loser.attempt.deployment:
                        rec.outcome = "cancelled"

        result, which = await race(self._tracked(op, r, dep, probe), delay, launch, discard)
        if hedged_to:
            self.notes.append(f"hedged to {hedged_to[0].id} after {delay * 1000:.0f}ms,"
                              f" {'hedge' if which else 'first'} won")
            fo.counters.hedge_wins_total += which
        return result
