"""One upstream attempt: one request to one deployment, with its timeouts, reporting its
outcome once to the scoreboard (routing) and the deployment's circuit breaker.

Timeouts: connect (in the client), first token (response head plus first chunk, for
streams), total (a non-streamed answer, whose first byte is the whole answer). Retries,
fallbacks, hedging and continuation (`gateway/dispatch.py`) are built from these.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from adapters import get_adapter
from adapters.base import StreamTranslator
from gateway.canonical import (
    CanonicalRequest,
    Deployment,
    ErrorClass,
    FailureKind,
    StreamChunk,
    UpstreamFailure,
    UpstreamRequest,
    Usage,
)
from gateway.config import Timeouts
from gateway.sse import SSEParser
from gateway.upstream import CUT_OFF, Response, UpstreamClient
from policies.breakers import Breaker, Breakers
from policies.scoreboard import DeploymentStats, Scoreboard


def misconfigured(failure: UpstreamFailure) -> bool:
    """401/402/403/404 from an upstream: its key, billing or model name is wrong. That is
    the deployment's fault, not the request's (`gateway.errors` answers 502 for it): fail
    over, and count it against the deployment's circuit."""
    return failure.kind is FailureKind.REJECTED and failure.status in (401, 402, 403, 404)


def final(failure: UpstreamFailure) -> bool:
    """No other attempt can change the answer (content policy, a bad request...)."""
    return failure.error_class is ErrorClass.FINAL and not misconfigured(failure)


@dataclass(slots=True)
class AttemptRecord:
    """What one upstream attempt cost, for metering: every attempt that reached an
    upstream is billed there, whether or not its answer reached the client."""

    deployment: Deployment
    outcome: str  # "ok" | "failed" | "hedge_lost" | "cut" (a stream continued elsewhere)
    usage: Usage | None = None  # None: the upstream reported nothing (metering may estimate)
    estimated: bool = False  # usage counted or derived by us, not reported upstream


@dataclass(slots=True)
class Completed:
    body: bytes
    usage: Usage | None
    deployment: Deployment
    history: list[AttemptRecord] | None = None  # set when more than one attempt was made

    @property
    def attempts(self) -> list[AttemptRecord]:
        """Every upstream attempt with its usage; the last one is the answer."""
        if self.history is None:
            return [AttemptRecord(self.deployment, "ok", self.usage)]
        return self.history


class Attempt:
    """One request to one deployment: its clock and its single report."""

    __slots__ = ("board", "breaker", "deployment", "probe", "reported", "started", "stats",
                 "ttft")

    def __init__(self, board: Scoreboard, deployment: Deployment,
                 breaker: Breaker | None = None, probe: bool = False) -> None:
        self.board = board
        self.deployment = deployment
        self.breaker = breaker
        self.probe = probe  # this attempt is its half-open circuit's probe
        self.stats: DeploymentStats = board.started(deployment)
        self.started = time.perf_counter()
        self.ttft: float | None = None
        self.reported = False

    def succeeded(self, chunks: int = 0) -> None:
        self.reported = True
        e2e = time.perf_counter() - self.started
        itl = None
        if self.ttft is not None and chunks > 1:
            itl = (e2e - self.ttft) / (chunks - 1)
        self.board.succeeded(self.stats, e2e_s=e2e, streamed=self.ttft is not None, itl_s=itl)
        if self.breaker is not None:
            self.breaker.success(self.board.clock(), self.probe)

    def failed(self, err: BaseException) -> None:
        if self.reported:
            return
        self.reported = True
        if isinstance(err, UpstreamFailure):
            err.deployment = err.deployment or self.deployment.id
            self.board.failed(self.stats, err.message,
                              timeout=err.kind is FailureKind.TIMEOUT,
                              upstream_fault=err.error_class is ErrorClass.RETRYABLE)
            if self.breaker is not None:
                self._judge(self.breaker, err)
        else:  # cancelled: the client went away (or a hedge lost): nothing about the upstream
            self.board.failed(self.stats, type(err).__name__, upstream_fault=False)
            if self.breaker is not None:
                self.breaker.release(self.probe)

    def _judge(self, breaker: Breaker, err: UpstreamFailure) -> None:
        now = self.board.clock()
        if err.retry_after:
            breaker.block(now, err.retry_after)
        if final(err):
            # It answered, sensibly: the request was wrong for it, the upstream is up.
            breaker.success(now, self.probe)
        elif err.kind is FailureKind.RATE_LIMITED and err.retry_after:
            breaker.release(self.probe)  # throttling, not broken: the block is the answer
        else:
            breaker.failure(now, self.probe, f"{err.kind.value}: {err.message}"[:200])


@dataclass(slots=True)
class Segment:
    """An upstream stream whose first chunks have arrived (one per continuation)."""

    attempt: Attempt
    resp: Response
    translator: StreamTranslator
    parser: SSEParser
    first: list[StreamChunk]

    def discard(self) -> None:
        """Drop it unread (a hedge that lost): the upstream sees the request end."""
        self.resp.close()
        self.attempt.failed(asyncio.CancelledError())


class AttemptRunner:
    def __init__(self, client: UpstreamClient, board: Scoreboard, timeouts: Timeouts,
                 breakers: Breakers | None = None) -> None:
        self.client = client
        self.board = board
        self.timeouts = timeouts
        self.breakers = breakers

    def _attempt(self, dep: Deployment, probe: bool,
                 ureq: UpstreamRequest | None = None) -> Attempt:
        # `ureq`: the request about to be sent, for a subclass that adds to its headers
        # (gateway.telemetry.traced: the W3C traceparent of the attempt's span).
        breaker = self.breakers.get(dep) if self.breakers is not None else None
        return Attempt(self.board, dep, breaker, probe)

    async def complete(self, req: CanonicalRequest, dep: Deployment,
                       probe: bool = False) -> Completed:
        adapter = get_adapter(dep.dialect)
        ureq = adapter.build_request(req, dep.target)
        attempt = self._attempt(dep, probe, ureq)
        deadline = self.client.loop.time() + self.timeouts.total_s
        try:
            resp = await self.client.send(ureq, deadline)
            try:
                body = await resp.read(deadline)
            finally:
                resp.release()
            if resp.status >= 300:
                raise _redacted(adapter.classify_error(resp.status, resp.headers, body), dep)
            result = adapter.parse_response(req, body)
        except TimeoutError:
            failure = UpstreamFailure(FailureKind.TIMEOUT,
                                      f"no response within {self.timeouts.total_s:g}s")
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
        attempt = self._attempt(dep, probe, ureq)
        resp: Response | None = None
        deadline = self.client.loop.time() + min(self.timeouts.first_token_s,
                                                 self.timeouts.total_s)
        try:
            resp = await self.client.send(ureq, deadline)
            if resp.status >= 300:
                body = await resp.read(deadline)
                raise _redacted(adapter.classify_error(resp.status, resp.headers, body), dep)
            translator = adapter.stream_translator(req)
            parser = SSEParser()
            first = await _first_chunks(resp, parser, translator, deadline)
        except BaseException as err:
            if resp is not None:
                resp.close()
            if isinstance(err, TimeoutError):
                err = UpstreamFailure(FailureKind.TIMEOUT,
                                      f"no first token within {self.timeouts.first_token_s:g}s")
            attempt.failed(err)
            raise err from None
        attempt.ttft = time.perf_counter() - attempt.started
        self.board.first_token(attempt.stats, attempt.ttft, req.prompt_tokens)
        return Segment(attempt, resp, translator, parser, first)


async def _first_chunks(
    resp: Response, parser: SSEParser, translator: StreamTranslator, deadline: float
) -> list[StreamChunk]:
    """Read until the upstream produced something for the client (or ended)."""
    out: list[StreamChunk] = []
    while not out and not translator.finished:
        line = await resp.readline(deadline)
        event = parser.feed_line(line) if line else parser.flush()
        if event is not None:
            out.extend(translator.feed(event.event, event.data))
        if not line:
            if not out and not translator.finished:
                raise UpstreamFailure(FailureKind.PROTOCOL, CUT_OFF)
            break
    return out


def _redacted(failure: UpstreamFailure, dep: Deployment) -> UpstreamFailure:
    """Upstream messages sometimes echo the key they were sent; never pass that on."""
    key = dep.target.api_key
    if key and key in failure.message:
        failure.message = failure.message.replace(key, "***")
        failure.args = (failure.message,)
    return failure
