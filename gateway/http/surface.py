"""One LLM endpoint, whatever dialect the client speaks: the pipeline steps and the
response flow live here once; a `ClientFormat` says how to parse the request and how
to render answers, streams and errors in the client's own format (OpenAI, Anthropic)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from gateway.cache import replay
from gateway.canonical import CanonicalRequest, Operation, StreamChunk, UpstreamFailure
from gateway.dispatch import UpstreamStream
from gateway.errors import GatewayError, from_upstream
from gateway.http.asgi import (
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    read_body,
    send_response,
)
from gateway.metering import Ticket, text_chars
from gateway.routing import apply_request_headers
from gateway.services import Services
from policies.keys import Principal
from policies.routing.base import Plan

log = logging.getLogger("turnout.http")

T = TypeVar("T")

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies in front not to buffer
]


class StreamEncoder(Protocol):
    def chunk(self, chunk: StreamChunk) -> bytes:
        """Bytes for the client for one canonical chunk (b"" when it shows nothing)."""
        ...

    def end(self) -> bytes: ...

    def error(self, err: GatewayError) -> bytes:
        """The in-stream error event that ends a stream whose 200 is already sent."""
        ...


class ClientFormat(Protocol):
    api_key_header: bytes | None  # a dialect's own key header besides Authorization

    def parse(self, op: Operation, raw: bytes, request_id: str) -> CanonicalRequest: ...

    def error_body(self, err: GatewayError, request_id: str) -> bytes: ...

    def completion_body(self, req: CanonicalRequest, body: bytes) -> bytes:
        """A canonical (OpenAI-shaped) non-streamed answer in the client's format."""
        ...

    def stream_encoder(self, req: CanonicalRequest) -> StreamEncoder: ...


_rid_prefix = ""
_rid_counter = itertools.count()


def _new_rid_prefix() -> None:
    # Random per process (forked workers get their own), then a counter: unique without
    # a syscall per request.
    global _rid_prefix, _rid_counter
    _rid_prefix = os.urandom(8).hex()
    _rid_counter = itertools.count()


_new_rid_prefix()
os.register_at_fork(after_in_child=_new_rid_prefix)


def request_id(given: bytes | None) -> str:
    """The client's `x-request-id` when it is a sane one, else a new id."""
    if given and len(given) <= 128 and given.isascii():
        return given.decode()
    return f"{_rid_prefix}{next(_rid_counter):08x}"


async def send_error(send: Send, fmt: ClientFormat, err: GatewayError, rid: str,
                     extra: Headers | None = None) -> None:
    headers = [(b"x-request-id", rid.encode())]
    headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    headers += extra or []
    await send_response(send, err.status, fmt.error_body(err, rid), headers)


def _route_headers(rid: str, deployment_id: str, plan: Plan) -> Headers:
    return [
        (b"x-request-id", rid.encode()),
        (b"x-turnout-deployment", deployment_id.encode()),
        (b"x-turnout-route", f"{plan.policy}; {plan.reason}".encode()),
    ]


class LLMEndpoint:
    """One POST endpoint (raw ASGI: no per-request framework objects on the hot path)."""

    def __init__(self, op: Operation, services: Services, fmt: ClientFormat) -> None:
        self.op = op
        self.services = services
        self.fmt = fmt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        headers = dict(scope["headers"])  # one pass; a repeated header: its last value
        rid = request_id(headers.get(b"x-request-id"))
        fmt = self.fmt
        pipeline = self.services.pipeline
        tel = self.services.telemetry
        # The request's server span, current until it settles; None (no work) when off.
        trace = tel.tracing.begin(scope, self.op) if tel.tracing is not None else None
        principal: Principal | None = None
        req: CanonicalRequest | None = None
        try:
            api_key = headers.get(fmt.api_key_header) if fmt.api_key_header else None
            principal = await pipeline.authenticate(headers.get(b"authorization"), api_key)
            raw = await read_body(receive, self.services.max_body, headers.get(b"content-length"))
            req = fmt.parse(self.op, raw, rid)
            apply_request_headers(req, headers.get(b"x-turnout-slo-ttft-ms"),
                                  headers.get(b"x-turnout-priority"))
            ticket, plan = await pipeline.admit(principal, req, scope["headers"])
        except GatewayError as err:
            tel.refused(rid, err.status, err.code, arrived, req, principal, trace)
            await send_error(send, fmt, err, rid)
            return
        except Exception:
            log.exception("unhandled error admitting request %s", rid)
            tel.refused(rid, 500, "internal_error", arrived, req, principal, trace)
            await send_error(send, fmt, _internal(rid), rid)
            return
        except asyncio.CancelledError:  # the client left before its request was admitted
            tel.refused(rid, 499, "client_closed", arrived, req, principal, trace)
            raise
        ticket.started = arrived  # latency counts from arrival: auth and parsing included
        if tel.active:
            tel.admitted(ticket, plan, trace)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        if ticket.cache_hit:  # answered from the response cache: nothing goes upstream
            work = self._replay(ticket, tracked)
        else:
            work = (self._stream if req.stream else self._complete)(ticket, plan, tracked)
        try:
            await cancel_on_disconnect(scope, receive, work, self.services.loop)
        except Exception:
            # A bug of ours: log it with the traceback, tell the client only that it happened.
            log.exception("unhandled error serving request %s", rid)
            ticket.status = 500
            if not started:
                await send_error(send, fmt, _internal(rid), rid, ticket.headers)
        finally:
            pipeline.settle(ticket)  # exactly once, whatever happened (0 left: client gone)

    async def _failed(self, send: Send, ticket: Ticket, failure: UpstreamFailure,
                      plan: Plan) -> None:
        # After failover the last failure may be any candidate's: name the one it was.
        err = from_upstream(failure, failure.deployment or plan.candidates[0].id)
        ticket.status = err.status
        await send_error(send, self.fmt, err, ticket.req.request_id, ticket.headers)

    async def _dispatch(self, ticket: Ticket, plan: Plan, send: Send,
                        dispatch: Awaitable[T]) -> T | None:
        """What dispatch returns, or None when it failed (the client has the error); the
        time it took is the request's wait on upstreams (the gateway-overhead metric)."""
        dispatched = time.monotonic()
        try:
            result = await dispatch
        except UpstreamFailure as failure:
            ticket.upstream_s = time.monotonic() - dispatched
            await self._failed(send, ticket, failure, plan)
            return None
        ticket.upstream_s = time.monotonic() - dispatched
        return result

    async def _complete(self, ticket: Ticket, plan: Plan, send: Send) -> None:
        req = ticket.req
        done = await self._dispatch(ticket, plan, send,
                                    self.services.pipeline.complete(req, plan))
        if done is None:
            return
        ticket.deployment, ticket.usage, ticket.body = done.deployment, done.usage, done.body
        ticket.retries = len(done.history) - 1 if done.history else 0
        ticket.status = 200
        await send_response(send, 200, self.fmt.completion_body(req, done.body),
                            _route_headers(req.request_id, done.deployment.id, plan)
                            + ticket.headers)
        ticket.first_byte = time.monotonic()

    async def _stream(self, ticket: Ticket, plan: Plan, send: Send) -> None:
        req = ticket.req
        stream = await self._dispatch(ticket, plan, send,
                                      self.services.pipeline.open_stream(req, plan))
        if stream is None:
            return
        ticket.deployment = stream.deployment
        try:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": SSE_HEADERS + _route_headers(req.request_id, stream.deployment.id,
                                                        plan) + ticket.headers,
            })
            ticket.first_byte = time.monotonic()
            await self._relay(stream, send, ticket, self.fmt.stream_encoder(req))
        finally:
            ticket.usage = stream.usage
            ticket.retries = len(stream.history) - 1 if stream.history else 0
            await stream.aclose()

    async def _replay(self, ticket: Ticket, send: Send) -> None:
        """A cache hit in the form the client asked for: the stored (canonical) answer,
        or, for a stream, its replay through the client's stream encoder, sent at once."""
        req = ticket.req
        assert ticket.cache is not None and ticket.cache.entry is not None
        entry = ticket.cache.entry
        headers = [(b"x-request-id", req.request_id.encode()), *ticket.headers]
        ticket.status = 200
        if not req.stream:
            await send_response(send, 200, self.fmt.completion_body(req, entry.body), headers)
        else:
            encoder = self.fmt.stream_encoder(req)
            body = b"".join([encoder.chunk(c) for c in replay.chunks(entry, req)])
            await send({"type": "http.response.start", "status": 200,
                        "headers": SSE_HEADERS + headers})
            await send({"type": "http.response.body", "body": body + encoder.end()})
        ticket.first_byte = time.monotonic()

    @staticmethod
    async def _relay(stream: UpstreamStream, send: Send, ticket: Ticket,
                     encoder: StreamEncoder) -> None:
        # Tracing notes the answer's id and finish reasons on the way; else nothing per chunk.
        chunks = stream.chunks() if ticket.trace is None else ticket.trace.watch(stream.chunks())
        if ticket.cache is not None and ticket.cache.assembler is not None:
            chunks = ticket.cache.assembler.watch(chunks)  # a miss to store: assembled whole
        try:
            async for chunk in chunks:
                if chunk.data:
                    ticket.streamed_chars += text_chars(chunk.data)
                out = encoder.chunk(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except UpstreamFailure as failure:
            # The 200 is already sent: end with an error event, which the SDKs raise on.
            err = from_upstream(failure, stream.deployment.id)
            ticket.status = err.status
            await send({"type": "http.response.body", "body": encoder.error(err)})
            return
        ticket.status = 200
        await send({"type": "http.response.body", "body": encoder.end()})


def _internal(rid: str) -> GatewayError:
    return GatewayError(500, f"internal error (request {rid})", type="server_error")
