"""Dispatch: run a routing plan against upstreams, and keep the request alive when they fail.

The success path is one attempt on the plan's first candidate (`AttemptRunner`, below),
awaited directly; all that failover adds to it is a circuit-breaker check and a
retry-budget deposit. When that attempt fails (or its circuit is open, or the model
hedges) a `Run` (`run.py`) takes over: the next candidates, fallback models, backoff
passes, the retry budget, least-bad tries. Streams add TTFT hedging (`hedging.py`) and
the continuation of a broken stream on another deployment (`continuation.py`).

An attempt: the adapter builds the upstream request, the HTTP client sends it, the adapter
reads the answer back into the canonical shape. Timeouts: connect (in the client), first
token (response head plus first chunk, for streams), total.
"""

from __future__ import annotations

from typing import TypeVar

from adapters import get_adapter
from gateway.canonical import (
    CanonicalRequest,
    Deployment,
    FailureKind,
    UpstreamFailure,
)
from gateway.config.server import Timeouts
from gateway.dispatch.attempts import Completed, NewAttempt, Segment, final, new_attempt
from gateway.dispatch.continuation import StreamResume
from gateway.dispatch.failover import Failover
from gateway.dispatch.run import Run
from gateway.dispatch.stream import UpstreamStream
from gateway.wire.base import HttpClient, HttpResponse
from gateway.wire.redact import redact
from policies.breakers import Breakers, Pass
from policies.routing.base import Plan
from policies.scoreboard import Scoreboard

__all__ = ["AttemptRunner", "Completed", "Dispatcher", "UpstreamStream"]

T = TypeVar("T")


class AttemptRunner:
    """One request to one deployment: `fetch` a whole answer, or `open` a stream."""

    def __init__(self, client: HttpClient, board: Scoreboard, timeouts: Timeouts,
                 breakers: Breakers | None = None, attempt: NewAttempt = new_attempt) -> None:
        self.client = client
        self.board = board
        self.timeouts = timeouts
        self.breakers = breakers
        self._attempt = attempt

    async def fetch(self, req: CanonicalRequest, dep: Deployment,
                    probe: bool = False) -> Completed:
        adapter = get_adapter(dep.dialect)
        ureq = adapter.build_request(req, dep.target)
        breaker = self.breakers.get(dep) if self.breakers is not None else None
        attempt = self._attempt(self.board, dep, breaker, probe, ureq)
        now, t = self.client.loop.time(), self.timeouts
        # The head within first_token_s, as a stream's first chunk: a hung upstream is
        # left for the next candidate then, not after the whole total_s.
        head_by, deadline = now + min(t.first_token_s, t.total_s), now + t.total_s
        resp: HttpResponse | None = None
        try:
            resp = await self.client.send(ureq, head_by)
            try:
                body = await resp.read(deadline)
            finally:
                resp.release()
            if resp.status >= 300:
                raise _redacted(adapter.classify_error(resp.status, resp.headers, body), dep)
            result = adapter.parse_response(req, body)
        except TimeoutError:
            waited = (f"no response within {min(t.first_token_s, t.total_s):g}s"
                      if resp is None else f"no whole response within {t.total_s:g}s")
            failure = UpstreamFailure(FailureKind.TIMEOUT, waited)
            attempt.failed(failure)
            raise failure from None
        except BaseException as err:
            attempt.failed(err)
            raise
        attempt.succeeded()
        return Completed(result.body, result.usage, dep)

    async def open(self, req: CanonicalRequest, dep: Deployment, probe: bool = False) -> Segment:
        """Send a streamed request and wait for its first chunks (the first-token timeout);
        on any failure the response is closed, so the upstream stops working on it."""
        adapter = get_adapter(dep.dialect)
        ureq = adapter.build_request(req, dep.target)
        breaker = self.breakers.get(dep) if self.breakers is not None else None
        attempt = self._attempt(self.board, dep, breaker, probe, ureq)
        resp: HttpResponse | None = None
        deadline = self.client.loop.time() + min(self.timeouts.first_token_s,
                                                 self.timeouts.total_s)
        try:
            resp = await self.client.send(ureq, deadline)
            if resp.status >= 300:
                body = await resp.read(deadline)
                raise _redacted(adapter.classify_error(resp.status, resp.headers, body), dep)
            seg = Segment(attempt, resp, adapter.stream_translator(req))
            # Until the upstream produced something for the client (or ended).
            while not seg.first and not seg.translator.finished and not seg.ended:
                seg.first = await seg.pull(deadline)
        except BaseException as err:
            if resp is not None:
                resp.close()
            if isinstance(err, TimeoutError):
                err = UpstreamFailure(FailureKind.TIMEOUT,
                                      f"no first token within {self.timeouts.first_token_s:g}s")
            attempt.failed(err)
            raise err from None
        attempt.first_token(req.prompt_tokens)
        return seg


def _redacted(failure: UpstreamFailure, dep: Deployment) -> UpstreamFailure:
    """Upstream messages sometimes echo the key they were sent, whole, in part or in
    another case, and may quote other credentials: never pass those on (wire/redact.py)."""
    target = dep.target
    failure.message = redact(failure.message, (target.api_key, *target.headers.values()))
    failure.args = (failure.message,)
    return failure


class Dispatcher:
    def __init__(self, runner: AttemptRunner, failover: Failover | None) -> None:
        self.runner = runner
        self.failover = failover  # None: one attempt on the first candidate, as configured
        self.timeouts = runner.timeouts

    async def complete(self, req: CanonicalRequest, plan: Plan) -> Completed:
        fo = self.failover
        dep = plan.candidates[0]
        if fo is None:
            return await self.runner.fetch(req, dep)
        fo.budget.request()
        verdict = fo.breakers.get(dep).admit(fo.clock())
        if verdict:
            try:
                return await self.runner.fetch(req, dep, verdict is Pass.PROBE)
            except UpstreamFailure as failure:
                run: Run[Completed] = self._after(req, plan, dep, failure)
        else:
            run = Run(fo, req, plan, skipped=dep)
        done = await run.drive(self.runner.fetch)
        if run.attempts > 1:
            done.history = run.history
        return done

    async def open_stream(self, req: CanonicalRequest, plan: Plan) -> UpstreamStream:
        fo = self.failover
        dep = plan.candidates[0]
        deadline = self.runner.client.loop.time() + self.timeouts.total_s
        if fo is None:
            return UpstreamStream(await self.runner.open(req, dep), deadline,
                                  self.timeouts.idle_s)
        fo.budget.request()
        hedge = fo.hedging.get(req.model)
        verdict = Pass.NO if hedge is not None else fo.breakers.get(dep).admit(fo.clock())
        run: Run[Segment] | None = None
        if verdict:
            try:
                seg = await self.runner.open(req, dep, verdict is Pass.PROBE)
            except UpstreamFailure as failure:
                run = self._after(req, plan, dep, failure)
                seg = await run.drive(self.runner.open)
        else:
            run = Run(fo, req, plan, skipped=dep if hedge is None else None)
            seg = await run.drive(self.runner.open, hedge=hedge)
        stream = UpstreamStream(seg, deadline, self.timeouts.idle_s,
                                StreamResume(self.runner, fo, req, plan))
        if run is not None and run.attempts > 1:
            stream.history, stream.record = run.history, run.winner
        return stream

    def _after(self, req: CanonicalRequest, plan: Plan, dep: Deployment,
               failure: UpstreamFailure) -> Run[T]:
        """A `Run` to go on after the first attempt failed; re-raises a final failure
        (most 4xx) right away, as no other attempt can change it."""
        fo = self.failover
        assert fo is not None
        if final(failure) and (
                failure.kind is not FailureKind.CONTEXT_LENGTH
                or fo.fallbacks.context_model(req.model) is None):
            raise failure
        run: Run[T] = Run(fo, req, plan)
        run.first_failed(dep, failure)
        return run
