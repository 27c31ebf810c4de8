"""One upstream attempt as dispatch keeps account of it: its clock and its single report
to the scoreboard (routing) and the deployment's circuit breaker, and what it cost.

The attempt itself (send, wait, read) is `AttemptRunner` in `dispatcher.py`; retries,
fallbacks, hedging and continuation are built from attempts (`run.py`, `hedging.py`,
`continuation.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.base import StreamTranslator
from gateway.canonical import (
    Deployment,
    ErrorClass,
    FailureKind,
    StreamChunk,
    UpstreamFailure,
    UpstreamRequest,
    Usage,
)
from gateway.wire.base import HttpResponse
from gateway.wire.http_client import CUT_OFF
from gateway.wire.sse import SSEParser
from policies.breakers import Breaker
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
        self.stats: DeploymentStats = board.started(deployment, self)
        self.started = time.perf_counter()
        self.ttft: float | None = None
        self.reported = False

    def first_token(self, prompt_tokens: int) -> None:
        """A stream's first token: its TTFT; and a half-open circuit's probe has its
        answer here (the upstream serves again), not at the stream's end, which may be
        many seconds away while requests keep going elsewhere. The rest of the stream
        counts as any attempt of a closed circuit."""
        self.ttft = time.perf_counter() - self.started
        self.board.first_token(self.stats, self.ttft, prompt_tokens, self)
        if self.probe and self.breaker is not None:
            self.breaker.success(self.board.clock(), True)
            self.probe = False

    def succeeded(self, chunks: int = 0) -> None:
        self.reported = True
        e2e = time.perf_counter() - self.started
        itl = None
        if self.ttft is not None and chunks > 1:
            itl = (e2e - self.ttft) / (chunks - 1)
        self.board.succeeded(self.stats, e2e_s=e2e, streamed=self.ttft is not None, itl_s=itl,
                             attempt=self)
        if self.breaker is not None:
            self.breaker.success(self.board.clock(), self.probe)

    def failed(self, err: BaseException) -> None:
        if self.reported:
            return
        self.reported = True
        if isinstance(err, UpstreamFailure):
            err.deployment = err.deployment or self.deployment.id
            self.board.failed(self.stats, err.message, attempt=self,
                              timeout=err.kind is FailureKind.TIMEOUT,
                              upstream_fault=err.error_class is ErrorClass.RETRYABLE)
            if self.breaker is not None:
                self._judge(self.breaker, err)
        else:  # cancelled: the client went away (or a hedge lost): nothing about the upstream
            self.board.failed(self.stats, type(err).__name__, upstream_fault=False,
                              attempt=self)
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
    """One upstream stream (one per continuation): its SSE lines read, parsed and
    translated into canonical chunks. `first`: what arrived before it was handed over."""

    attempt: Attempt
    resp: HttpResponse
    translator: StreamTranslator
    parser: SSEParser = field(default_factory=SSEParser)
    first: list[StreamChunk] = field(default_factory=list)
    ended: bool = False  # the body has ended

    async def pull(self, deadline: float) -> list[StreamChunk]:
        """The canonical chunks of the next line (often none). At the end of the body, an
        upstream that did not finish its stream cut it short: UpstreamFailure, unless its
        last event still gave chunks (then the next pull raises)."""
        if self.ended:
            raise UpstreamFailure(FailureKind.PROTOCOL, CUT_OFF)
        line = await self.resp.readline(deadline)
        event = self.parser.feed_line(line) if line else self.parser.flush()
        out = self.translator.feed(event.event, event.data) if event is not None else []
        if not line:
            self.ended = True
            if not out and not self.translator.finished:
                raise UpstreamFailure(FailureKind.PROTOCOL, CUT_OFF)
        return out

    def discard(self) -> None:
        """Drop it unread (a hedge that lost): the upstream sees the request end."""
        self.resp.close()
        self.attempt.failed(asyncio.CancelledError())


# Makes each attempt's record: `Attempt` itself, or a subclass that also traces it
# (gateway/telemetry/traced.py), chosen by the services. `UpstreamRequest`: what is about
# to be sent, so a tracer can add its trace context to the headers.
NewAttempt = Callable[[Scoreboard, Deployment, Breaker | None, bool, UpstreamRequest], Attempt]


def new_attempt(board: Scoreboard, deployment: Deployment, breaker: Breaker | None,
                probe: bool, ureq: UpstreamRequest) -> Attempt:
    return Attempt(board, deployment, breaker, probe)
