"""Dispatch: run a routing plan against upstreams, with timeouts, reporting to the scoreboard.

One attempt per request for now (the first candidate of the plan); retries, fallbacks
and hedging build on `Attempt`. Timeouts: connect (in the client), first token (response
head plus first chunk for streams), idle (gap between chunks) and total. Every attempt
reports its latencies or its failure to the scoreboard, which routing reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from adapters import get_adapter
from adapters.base import StreamTranslator
from gateway.canonical import (
    CanonicalRequest,
    Deployment,
    ErrorClass,
    FailureKind,
    StreamChunk,
    UpstreamFailure,
    Usage,
)
from gateway.config import Timeouts
from gateway.sse import SSEParser
from gateway.upstream import CUT_OFF, Response, UpstreamClient, read_error
from policies.routing.base import Plan
from policies.scoreboard import DeploymentStats, Scoreboard


@dataclass(slots=True)
class Completed:
    body: bytes
    usage: Usage | None
    deployment: Deployment


class Attempt:
    """One request to one deployment: its clock and its single report to the scoreboard."""

    __slots__ = ("board", "deployment", "reported", "started", "stats", "ttft")

    def __init__(self, board: Scoreboard, deployment: Deployment) -> None:
        self.board = board
        self.deployment = deployment
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

    def failed(self, err: BaseException) -> None:
        if self.reported:
            return
        self.reported = True
        if isinstance(err, UpstreamFailure):
            self.board.failed(self.stats, err.message,
                              timeout=err.kind is FailureKind.TIMEOUT,
                              upstream_fault=err.error_class is ErrorClass.RETRYABLE)
        else:  # cancelled: the client went away, which says nothing about the upstream
            self.board.failed(self.stats, type(err).__name__, upstream_fault=False)


class UpstreamStream:
    """An open upstream stream whose first chunks have already arrived.

    `chunks()` yields canonical chunks; `aclose()` must always be called (the response
    does it in a `finally`), which releases the connection even if `chunks()` never ran.
    Closing before the upstream finished drops the connection, which is how the
    upstream learns that the client went away.
    """

    def __init__(self, dispatcher: Dispatcher, attempt: Attempt, resp: Response,
                 translator: StreamTranslator, parser: SSEParser, first: list[StreamChunk],
                 deadline: float) -> None:
        self.deployment = attempt.deployment
        self.usage: Usage | None = None
        self._dispatcher = dispatcher
        self._attempt = attempt
        self._resp = resp
        self._translator = translator
        self._parser = parser
        self._pending = first
        self._deadline = deadline
        self._chunks = 0
        self._closed = False
        self._ok = False

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        for chunk in self._pending:
            yield self._note(chunk)
        self._pending = []
        idle = self._dispatcher.timeouts.idle_s
        loop = asyncio.get_running_loop()
        content = self._resp.content
        try:
            async with asyncio.timeout(None) as budget:
                while not self._translator.finished:
                    budget.reschedule(min(loop.time() + idle, self._deadline))
                    line = await content.readline()
                    event = self._parser.feed_line(line) if line else self._parser.flush()
                    if event is not None:
                        for chunk in self._translator.feed(event.event, event.data):
                            yield self._note(chunk)
                    if not line:
                        if not self._translator.finished:
                            raise UpstreamFailure(FailureKind.PROTOCOL, CUT_OFF)
                        break
        except (TimeoutError, aiohttp.ClientError) as err:
            failure = read_error(err)
            self._attempt.failed(failure)
            raise failure from None
        except UpstreamFailure as failure:
            self._attempt.failed(failure)
            raise
        self._ok = True
        self._attempt.succeeded(self._chunks)

    def _note(self, chunk: StreamChunk) -> StreamChunk:
        self._chunks += 1
        if chunk.usage is not None:
            self.usage = chunk.usage
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ok:
            self._resp.release()
        else:
            self._resp.close()  # drop the connection: the upstream sees the request end
            self._attempt.failed(asyncio.CancelledError())


class Dispatcher:
    def __init__(self, client: UpstreamClient, board: Scoreboard, timeouts: Timeouts) -> None:
        self.client = client
        self.board = board
        self.timeouts = timeouts

    async def complete(self, req: CanonicalRequest, plan: Plan) -> Completed:
        dep = plan.candidates[0]
        adapter = get_adapter(dep.dialect)
        ureq = adapter.build_request(req, dep.target)
        attempt = Attempt(self.board, dep)
        try:
            async with asyncio.timeout(self.timeouts.total_s):
                resp = await self.client.send(ureq)
                try:
                    body = await resp.read()
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
        except aiohttp.ClientError as err:
            failure = read_error(err)
            attempt.failed(failure)
            raise failure from None
        except BaseException as err:
            attempt.failed(err)
            raise
        attempt.succeeded()
        return Completed(result.body, result.usage, dep)

    async def open_stream(self, req: CanonicalRequest, plan: Plan) -> UpstreamStream:
        dep = plan.candidates[0]
        adapter = get_adapter(dep.dialect)
        ureq = adapter.build_request(req, dep.target)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s
        attempt = Attempt(self.board, dep)
        resp: Response | None = None
        try:
            async with asyncio.timeout(min(self.timeouts.first_token_s, self.timeouts.total_s)):
                resp = await self.client.send(ureq)
                if resp.status >= 300:
                    body = await resp.read()
                    raise _redacted(adapter.classify_error(resp.status, resp.headers, body), dep)
                translator = adapter.stream_translator(req)
                parser = SSEParser()
                first = await _first_chunks(resp, parser, translator)
        except BaseException as err:
            if resp is not None:
                resp.close()
            if isinstance(err, TimeoutError):
                err = UpstreamFailure(FailureKind.TIMEOUT,
                                      f"no first token within {self.timeouts.first_token_s:g}s")
            elif isinstance(err, aiohttp.ClientError):
                err = read_error(err)
            attempt.failed(err)
            raise err from None
        attempt.ttft = time.perf_counter() - attempt.started
        self.board.first_token(attempt.stats, attempt.ttft)
        return UpstreamStream(self, attempt, resp, translator, parser, first, deadline)


async def _first_chunks(
    resp: Response, parser: SSEParser, translator: StreamTranslator
) -> list[StreamChunk]:
    """Read until the upstream produced something for the client (or ended)."""
    out: list[StreamChunk] = []
    while not out and not translator.finished:
        line = await resp.content.readline()
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
