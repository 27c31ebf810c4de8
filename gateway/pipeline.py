"""The request pipeline: the one place that knows the order of the steps, for every client
format (OpenAI's and Anthropic's LLM endpoints all run `Pipeline.serve`).

    authenticate → parse → cache lookup → admit → plan → dispatch → respond → settle

1. authenticate: the key → a Principal (`accounting/admission.py`, cached in-process);
2. parse: the body, bounded, into a CanonicalRequest by the client's format (`http/`);
3. cache: an exact-match lookup before admission, so a hit costs no budget reservation
   (it still counts against RPM) and is replayed without routing (`cache/`);
4. admit: limits and budgets reserved, atomically (`accounting/admission.py`);
5. plan: the model's policy orders its deployments (`planner.py`); it may shed the request;
6. dispatch: attempts, failover, hedging, continuation (`dispatch/`);
7. respond: the answer (or the stream, chunk by chunk) rendered in the client's format,
   with the upstream's work cancelled when the client goes away;
8. settle: exactly once, whatever happened: the cache stores a successful miss, the meter
   records usage and cost (`accounting/metering.py`), telemetry closes the request.

Before admission a failure is a refusal: an error in the client's format, nothing to
settle. From admission on, the request's `Outcome` is filled in and settled in a `finally`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gateway.accounting.admission import AdmissionStage, Authenticator
from gateway.accounting.metering import Meter, Outcome, RequestContext, text_chars
from gateway.cache import CacheStage, CacheTicket, hit_stream
from gateway.cache.assemble import StreamAssembler
from gateway.canonical import CanonicalRequest, Deployment, Operation, UpstreamFailure, Usage
from gateway.dispatch.dispatcher import Dispatcher, UpstreamStream
from gateway.errors import GatewayError, from_upstream
from gateway.http.asgi import (
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    client_address,
    read_body,
    request_id,
    send_response,
)
from gateway.http.client_format import SSE_HEADERS, ClientFormat, StreamEncoder, send_error
from gateway.planner import PlanStage, apply_request_headers
from gateway.registry import Registry
from gateway.telemetry import Telemetry
from gateway.telemetry.tracing import RequestTrace
from policies.keys import Principal
from policies.routing.base import Plan, RouteHints
from selfhost.lora import AdapterDirectory

log = logging.getLogger("turnout.http")

T = TypeVar("T")
Prepare = Callable[[Principal, CanonicalRequest], Awaitable[None]]


class Reply:
    """How one admitted request's answer goes back: in the client's format, through the
    ASGI `send`, with the headers every response of it carries, past whoever watches the
    chunks (its trace; the cache assembling a miss to store)."""

    __slots__ = ("_send", "assembler", "cut", "encoder", "fmt", "headers", "started", "trace")

    def __init__(self, fmt: ClientFormat, send: Send, headers: Headers,
                 trace: RequestTrace | None) -> None:
        self.fmt = fmt
        self._send = send
        self.headers = headers
        self.trace = trace
        self.assembler: StreamAssembler | None = None
        self.encoder: StreamEncoder | None = None  # a stream's, once it has started
        self.started = False  # a response head went out: an error can only end the body
        self.cut = False  # still running at the end of the drain: it ends with an error

    async def send(self, message: Message) -> None:
        self.started = True
        await self._send(message)


class Pipeline:
    def __init__(self, *, registry: Registry, authenticator: Authenticator,
                 cache: CacheStage | None, admission: AdmissionStage, planner: PlanStage,
                 dispatcher: Dispatcher, meter: Meter, telemetry: Telemetry | None,
                 loop: asyncio.AbstractEventLoop, max_body: int,
                 adapters: AdapterDirectory | None = None) -> None:
        self.registry = registry
        self.adapters = adapters  # None: no pool serves LoRA adapters
        self.authenticator = authenticator
        self.cache = cache  # None: no model or team is cached, the cache costs nothing
        self.admission = admission
        self.planner = planner
        self.dispatcher = dispatcher
        self.meter = meter
        self.telemetry = telemetry  # None: traces, metrics and access log all off
        self.loop = loop  # asked for once: on Python 3.11 each get_running_loop() is a getpid()
        self.max_body = max_body
        self.draining = False  # the server was told to stop: finishing what is in flight
        self._in_flight: dict[Reply, asyncio.Task[Any]] = {}  # what a drain may have to cut

    def drain(self, within_s: float) -> None:
        """The server stops accepting requests and gives those in flight `within_s` to
        finish (server.drain_timeout_s). What still runs just before then is cut by us,
        cleanly: a stream ends with the in-stream error event, an answer not yet begun
        with a 503, instead of being cancelled mid-body by the server's own timeout."""
        if not self.draining:
            self.draining = True
            self.loop.call_later(max(0.0, within_s - _CUT_BEFORE_S), self._cut)

    def _cut(self) -> None:
        for reply, task in list(self._in_flight.items()):
            reply.cut = True
            task.cancel(_DRAINED)

    async def serve(self, scope: Scope, receive: Receive, send: Send, op: Operation,
                    fmt: ClientFormat, prepare: Prepare | None = None) -> None:
        """One LLM request, from its ASGI scope to its settlement: authenticated and parsed
        here, the rest in `handle` (the response cancelled if the client leaves).
        `prepare`: a stateful format's step after parsing, refused like a parse error (the
        Responses API loads the conversation of `previous_response_id`)."""
        arrived = time.monotonic()
        headers = dict(scope["headers"])  # one pass; a repeated header: its last value
        rid = request_id(headers.get(b"x-request-id"))
        trace = self.telemetry.begin(scope, op) if self.telemetry is not None else None
        principal: Principal | None = None
        req: CanonicalRequest | None = None
        try:
            api_key = headers.get(fmt.api_key_header) if fmt.api_key_header else None
            principal = await self.authenticator.authenticate(
                headers.get(b"authorization"), api_key, client_address(scope))
            raw = await read_body(receive, self.max_body, headers.get(b"content-length"))
            req = fmt.parse(op, raw, rid)
            apply_request_headers(req, headers.get(b"x-turnout-slo-ttft-ms"),
                                  headers.get(b"x-turnout-priority"))
            if prepare is not None:
                await prepare(principal, req)
        except BaseException as err:
            await self._refuse(err, send, fmt, rid, arrived, req, principal, trace)
            return
        await self.handle(principal, req, fmt, send, arrived=arrived, trace=trace,
                          raw_headers=scope["headers"],
                          run=lambda work: cancel_on_disconnect(scope, receive, work, self.loop))

    async def handle(self, principal: Principal, req: CanonicalRequest, fmt: ClientFormat,
                     send: Send, *, arrived: float, trace: RequestTrace | None = None,
                     raw_headers: Sequence[tuple[bytes, bytes]] = (),
                     run: Callable[[Awaitable[None]], Awaitable[None]] | None = None) -> None:
        """An authenticated, parsed request, from the cache to its settlement, answered
        through `send` in `fmt` (an HTTP client's, or an in-process caller's such as the
        batch lane). `raw_headers`: the request's, for its cache directives; `run`: how the
        response's work is awaited (the HTTP surface cancels it when the client leaves)."""
        tel = self.telemetry
        rid = req.request_id
        cached: CacheTicket | None = None
        try:
            deps = self._deployments(principal, req)
            if self.cache is not None:
                cached = await self.cache.lookup(principal, req, raw_headers)
            if cached is not None and cached.entry is not None:
                ctx = await self.admission.admit_hit(principal, req)
            else:
                ctx = await self.admission.admit(principal, req, self._reserve_for(req, deps))
        except BaseException as err:
            if self.cache is not None and cached is not None:
                self.cache.abandon(cached)  # a miss that was to lead: a waiter leads instead
            await self._refuse(err, send, fmt, rid, arrived, req, principal, trace)
            return
        if tel is not None:
            tel.admitted(ctx, trace)
        out = Outcome(arrived)
        reply = Reply(fmt, send, list(ctx.ratelimit_headers), trace)
        if self.cache is not None and cached is not None:
            out.cache = cached.outcome
            reply.headers += self.cache.admitted(cached, req)
            reply.assembler = cached.assembler
        plan: Plan | None = None
        task = asyncio.current_task(self.loop)
        if task is not None:
            self._in_flight[reply] = task
        try:
            if cached is not None and cached.entry is not None:
                work = self._replay(ctx, cached, out, reply)
            else:
                # An adapter no replica has: loaded first where the pool allows.
                note = await self.adapters.ensure(deps) if self.adapters is not None else None
                plan = self._plan(ctx, deps)
                if note:
                    plan.reason += f"; {note}"
                respond = self._stream if req.stream else self._complete
                work = respond(ctx, plan, out, reply)
            await (run(work) if run is not None else work)
        except GatewayError as err:  # planning refused it (shed): admitted, so settled
            out.status = err.status
            await send_error(send, fmt, err, rid, reply.headers)
        except asyncio.CancelledError:
            if not reply.cut:
                raise
            if task is not None:
                task.uncancel()  # ours, at the end of the drain: answered, not propagated
            out.status = _SHUTTING_DOWN.status
            await self._end_cut(reply, rid)
        except Exception:
            # A bug of ours: log it with the traceback, tell the client only that it happened.
            log.exception("unhandled error serving request %s", rid)
            out.status = 500
            if not reply.started:
                await send_error(send, fmt, _internal(rid), rid, reply.headers)
        finally:
            self._in_flight.pop(reply, None)
            self._settle(ctx, out, cached, plan, trace)

    @staticmethod
    async def _end_cut(reply: Reply, rid: str) -> None:
        """End a response the drain cut: a stream with its error event, an answer not yet
        begun with a 503 (a non-streamed one being sent is past saving)."""
        if not reply.started:
            await send_error(reply.send, reply.fmt, _SHUTTING_DOWN, rid, reply.headers)
        elif reply.encoder is not None:
            await reply.send({"type": "http.response.body",
                              "body": reply.encoder.error(_SHUTTING_DOWN)})

    # -- before admission -----------------------------------------------------------------

    def _deployments(self, principal: Principal, req: CanonicalRequest) -> list[Deployment]:
        deps = self.registry.models.get(req.model)
        if not deps:
            raise GatewayError(
                404, f"The model `{_shown(req.model)}` does not exist or you do not have"
                " access to it.", code="model_not_found", param="model")
        if not principal.may_use(req.model):
            raise GatewayError(403, f"Your key may not use the model `{req.model}`.",
                               code="model_not_allowed", param="model")
        # A fallback may only be a model the key may use.
        req.allowed_models = principal.models
        return deps

    def _reserve_for(self, req: CanonicalRequest, deps: list[Deployment]) -> list[Deployment]:
        """Where the request could end up, fallbacks included: the budget reservation
        covers the dearest of them."""
        more = [d for m in self.registry.fallback_models(req.model)
                if not req.allowed_models or m in req.allowed_models
                for d in self.registry.models.get(m, ())]
        return deps + more if more else deps

    async def _refuse(self, err: BaseException, send: Send, fmt: ClientFormat, rid: str,
                      arrived: float, req: CanonicalRequest | None,
                      principal: Principal | None, trace: RequestTrace | None) -> None:
        """Answer a request refused before admission (re-raises a cancellation: the
        client left before its request was admitted, 499)."""
        status, code = 499, None
        if isinstance(err, GatewayError):
            status, code = err.status, err.code
            await send_error(send, fmt, err, rid)
        elif isinstance(err, Exception):
            log.exception("unhandled error admitting request %s", rid)
            status = 500
            await send_error(send, fmt, _internal(rid), rid)
        if self.telemetry is not None:
            self.telemetry.refused(rid, status, code, arrived, req, principal, trace)
        if not isinstance(err, Exception):
            raise err

    def _plan(self, ctx: RequestContext, deps: list[Deployment]) -> Plan:
        req, principal = ctx.req, ctx.principal
        req.prompt_tokens = ctx.prompt_estimate
        hints = RouteHints(prompt_tokens=ctx.prompt_estimate, max_tokens=ctx.max_output)
        return self.planner.plan(req, deps, hints, team_slo_ms=principal.slo_ttft_ms,
                                 team_priority=principal.priority)

    # -- dispatch and respond -------------------------------------------------------------

    @staticmethod
    async def _dispatch(out: Outcome, plan: Plan, dispatch: Awaitable[T], reply: Reply,
                        rid: str) -> T | None:
        """What dispatch returns, or None when it failed (the client has the error); the
        time it took is the request's wait on upstreams (the gateway-overhead metric)."""
        dispatched = time.monotonic()
        try:
            return await dispatch
        except UpstreamFailure as failure:
            # After failover the last failure may be any candidate's: name the one it was.
            err = from_upstream(failure, failure.deployment or plan.candidates[0].id)
            out.status = err.status
            await send_error(reply.send, reply.fmt, err, rid, reply.headers)
            return None
        finally:
            out.upstream_s = time.monotonic() - dispatched

    async def _complete(self, ctx: RequestContext, plan: Plan, out: Outcome,
                        reply: Reply) -> None:
        req = ctx.req
        done = await self._dispatch(out, plan, self.dispatcher.complete(req, plan), reply,
                                    req.request_id)
        if done is None:
            return
        out.deployment, out.usage, out.body = done.deployment, done.usage, done.body
        out.retries = len(done.history) - 1 if done.history else 0
        out.status = 200
        await send_response(reply.send, 200, reply.fmt.completion_body(req, done.body),
                            _route_headers(req.request_id, done.deployment.id, plan)
                            + reply.headers)
        out.first_byte = time.monotonic()

    async def _stream(self, ctx: RequestContext, plan: Plan, out: Outcome,
                      reply: Reply) -> None:
        req = ctx.req
        stream = await self._dispatch(out, plan, self.dispatcher.open_stream(req, plan), reply,
                                      req.request_id)
        if stream is None:
            return
        out.deployment = stream.deployment
        try:
            await reply.send({"type": "http.response.start", "status": 200,
                              "headers": SSE_HEADERS + _route_headers(
                                  req.request_id, stream.deployment.id, plan) + reply.headers})
            out.first_byte = time.monotonic()
            reply.encoder = reply.fmt.stream_encoder(req)
            await self._relay(stream, out, reply, reply.encoder)
        finally:
            out.usage = stream.usage
            out.retries = len(stream.history) - 1 if stream.history else 0
            await stream.aclose()

    @staticmethod
    async def _relay(stream: UpstreamStream, out: Outcome, reply: Reply,
                     encoder: StreamEncoder) -> None:
        send = reply.send
        # Who looks at each chunk on the way, called in the loop (no generator layer each):
        # tracing notes the answer's id and finish reasons, the cache assembles a miss to
        # store. Neither: nothing per chunk.
        trace = reply.trace if reply.trace is not None and reply.trace.recording else None
        assembler = reply.assembler
        try:
            async for chunk in stream.chunks():
                if chunk.data:
                    out.streamed_chars += text_chars(chunk.data)
                    if trace is not None:
                        trace.note(chunk.data)
                    if assembler is not None:
                        assembler.feed(chunk)
                data = encoder.chunk(chunk)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except UpstreamFailure as failure:
            # The 200 is already sent: end with an error event, which the SDKs raise on.
            err = from_upstream(failure, stream.deployment.id)
            out.status = err.status
            await send({"type": "http.response.body", "body": encoder.error(err)})
            return
        out.status = 200
        await send({"type": "http.response.body", "body": encoder.end()})

    @staticmethod
    async def _replay(ctx: RequestContext, cached: CacheTicket, out: Outcome,
                      reply: Reply) -> None:
        """A cache hit in the form the client asked for: the stored (canonical) answer,
        or, for a stream, its replay through the client's stream encoder, sent at once.
        Metered as a hit: nothing generated, and what its answer took to generate saved."""
        req, entry = ctx.req, cached.entry
        assert entry is not None
        out.usage = Usage()
        out.saved_tokens, out.saved_cost_nanos = entry.usage.total_tokens, entry.cost_nanos
        headers = [(b"x-request-id", req.request_id.encode()), *reply.headers]
        out.status = 200
        if not req.stream:
            await send_response(reply.send, 200, reply.fmt.completion_body(req, entry.body),
                                headers)
        else:
            encoder = reply.fmt.stream_encoder(req)
            body = b"".join([encoder.chunk(c) for c in hit_stream.chunks(entry, req)])
            await reply.send({"type": "http.response.start", "status": 200,
                              "headers": SSE_HEADERS + headers})
            await reply.send({"type": "http.response.body", "body": body + encoder.end()})
        out.first_byte = time.monotonic()

    # -- settle -----------------------------------------------------------------------------

    def _settle(self, ctx: RequestContext, out: Outcome, cached: CacheTicket | None,
                plan: Plan | None, trace: RequestTrace | None) -> None:
        """Exactly once per admitted request, whatever happened (0 left: client gone)."""
        if self.cache is not None and cached is not None:
            self.cache.finish(cached, ctx, out)  # stores a successful miss, in the background
        args = self.meter.settle(ctx, out)
        if self.telemetry is not None:
            self.telemetry.settled(ctx, out, args, trace, plan)


def _route_headers(rid: str, deployment_id: str, plan: Plan) -> Headers:
    return [
        (b"x-request-id", rid.encode()),
        (b"x-turnout-deployment", deployment_id.encode()),
        (b"x-turnout-route", f"{plan.policy}; {plan.reason}".encode()),
    ]


def _shown(name: str, limit: int = 256) -> str:
    """A client-given name as an error message quotes it: bounded."""
    return name if len(name) <= limit else name[:limit] + "…"


_CUT_BEFORE_S = 1.0  # the drain's cut comes this long before the server's own deadline
_DRAINED = "turnout: the drain's deadline"
_SHUTTING_DOWN = GatewayError(
    503, "the gateway is shutting down and this response outlasted its drain"
    " (server.drain_timeout_s); send it again", type="server_error", code="shutting_down",
    headers={"retry-after": "1"})


def _internal(rid: str) -> GatewayError:
    return GatewayError(500, f"internal error (request {rid})", type="server_error")
