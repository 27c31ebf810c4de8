"""OpenTelemetry traces: one server span per request, following the GenAI semantic
conventions, with the client's W3C trace context as its parent.

Child spans (admission, routing, each upstream attempt) come from `gateway.telemetry.traced`;
they find the request's `RequestTrace` in the OpenTelemetry context, which `begin` attaches
and `finish` detaches (the surface runs a request in one task, and hedges copy its context).

When tracing is off none of this runs: the surface checks `Telemetry.tracing is None` once
per request and builds no span, no context and no wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from gateway.accounting.metering import Outcome, RequestContext
from gateway.canonical import CanonicalRequest, Deployment, Operation, StreamChunk
from gateway.config import TracingConfig
from gateway.dispatch.continuation import read_partial
from gateway.http.asgi import Scope
from gateway.store import SettleArgs
from gateway.telemetry import genai
from policies.budgets import to_usd
from policies.keys import Principal
from policies.routing.base import Plan

log = logging.getLogger("turnout.tracing")

_TRACE_KEY = context.create_key("turnout-request-trace")


class _ScopeHeaders(Getter[Scope]):
    """Reads propagation headers straight from the ASGI scope (no header dict per request)."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.encode()
        values = [v.decode("latin-1") for k, v in carrier["headers"] if k == name]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier["headers"]]


_GETTER = _ScopeHeaders()


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def build_exporter(cfg: TracingConfig) -> SpanExporter | None:
    """The configured exporter; the OTLP ones are imported only when used (gRPC is heavy)."""
    kind = cfg.exporter or _env("OTEL_TRACES_EXPORTER") or "otlp"
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    protocol = cfg.protocol or _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                    "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    headers = cfg.headers or None  # None: the exporter reads OTEL_EXPORTER_OTLP_*HEADERS
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
        return GrpcExporter(endpoint=cfg.endpoint, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = cfg.endpoint
    if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # a base URL, as the env variable takes
    return OTLPSpanExporter(endpoint=endpoint, headers=headers)


def build_provider(cfg: TracingConfig) -> TracerProvider | None:
    if not cfg.enabled or (_env("OTEL_SDK_DISABLED") or "").lower() == "true":
        return None
    attrs: dict[str, Any] = {}
    if cfg.service_name:
        attrs["service.name"] = cfg.service_name
    elif not _env("OTEL_SERVICE_NAME"):
        attrs["service.name"] = "turnout"
    # sampler=None: the SDK reads OTEL_TRACES_SAMPLER(_ARG), default parent-based always-on.
    sampler = ParentBased(TraceIdRatioBased(cfg.sample_ratio)) \
        if cfg.sample_ratio is not None else None
    # Shut down (and flushed) by `Tracing.shutdown` with the app, not at interpreter exit.
    provider = TracerProvider(resource=Resource.create(attrs), sampler=sampler,
                              shutdown_on_exit=False)
    exporter = build_exporter(cfg)
    if exporter is not None:
        # Batching: span ends only enqueue; export runs on the processor's own thread.
        processor = SimpleSpanProcessor(exporter) if isinstance(exporter, ConsoleSpanExporter) \
            else BatchSpanProcessor(exporter)
        provider.add_span_processor(processor)
    return provider


class Tracing:
    def __init__(self, cfg: TracingConfig, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("turnout")
        self.capture_teams = frozenset(cfg.capture_content)

    @classmethod
    def build(cls, cfg: TracingConfig) -> Tracing | None:
        """Tracing as configured; None when it is off."""
        provider = build_provider(cfg)
        return cls(cfg, provider) if provider is not None else None

    def begin(self, scope: Scope, op: Operation) -> RequestTrace:
        return RequestTrace(self, scope, op)

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush what is batched and stop. The export may block for its whole timeout
        when the collector is unreachable, so it runs on a thread of its own (a daemon:
        it never holds up the process's exit) and is waited for `timeout_s` at most."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def flush() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=flush, name="turnout-span-flush", daemon=True).start()
        try:
            async with asyncio.timeout(timeout_s):
                await done.wait()
        except TimeoutError:
            log.warning("spans still unexported after %gs at shutdown: dropped", timeout_s)


def current() -> RequestTrace | None:
    """The trace of the request this code runs for, if any."""
    found = context.get_value(_TRACE_KEY)
    return found if isinstance(found, RequestTrace) else None


class RequestTrace:
    """One request's server span, and what the end of the request sets on it."""

    __slots__ = ("_token", "attempts", "capture", "context", "first", "op", "reasons",
                 "recording", "req", "seen", "span", "tracing", "winner")

    def __init__(self, tracing: Tracing, scope: Scope, op: Operation) -> None:
        self.tracing = tracing
        self.op = op
        parent = propagate.extract(scope, context=Context(), getter=_GETTER)
        self.span: Span = tracing.tracer.start_span(
            genai.OPERATION[op], parent, SpanKind.SERVER,
            {"gen_ai.operation.name": genai.OPERATION[op], "http.request.method": "POST",
             "url.path": scope["path"]})
        # Sampled out: no child spans at all, only the context passed on upstream.
        self.recording = self.span.is_recording()
        self.context = context.set_value(_TRACE_KEY, self,
                                         trace.set_span_in_context(self.span, parent))
        self._token: object | None = context.attach(self.context)
        self.attempts = 0
        self.req: CanonicalRequest | None = None
        self.capture = False  # record prompt and completion (the team opted in)
        self.first: bytes | None = None  # a stream's first chunk (response id, model)
        self.reasons: list[str] = []  # a stream's finish reasons
        self.seen: list[bytes] | None = None  # a stream's chunks, kept only when capturing
        self.winner: tuple[Span, int] | None = None  # the attempt that answered, its end (ns)

    @property
    def open(self) -> bool:
        return self._token is not None

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def admitted(self, ctx: RequestContext) -> None:
        self.req = ctx.req
        self.capture = ctx.principal.team in self.tracing.capture_teams
        if self.capture:
            self.seen = []

    def next_attempt(self) -> int:
        self.attempts += 1
        return self.attempts

    def attempt_attributes(self, dep: Deployment) -> genai.Attributes:
        """The request's `gen_ai.request.*` as the attempt sends it: the upstream's model."""
        if self.req is None:
            return {"gen_ai.operation.name": genai.OPERATION[self.op]}
        return genai.request_attributes(self.req, dep.target.upstream_model)

    async def watch(self, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        """The stream's chunks, noting its id, model and finish reasons on the way."""
        async for chunk in chunks:
            data = chunk.data
            if data:
                if self.first is None:
                    self.first = data
                self.reasons += genai.finish_reasons(data)
                if self.seen is not None:
                    self.seen.append(data)
            yield chunk

    def won(self, span: Span) -> None:
        """An attempt succeeded: its span ends with the request, carrying the answer."""
        if self.winner is not None:
            self.winner[0].end(self.winner[1])
        self.winner = (span, time.time_ns())

    def finish(self, ctx: RequestContext, out: Outcome, args: SettleArgs,
               plan: Plan | None) -> None:
        req = ctx.req
        span = self.span
        if not self.recording:  # sampled out: its context still went upstream
            self._end(req, out.status, None)
            return
        attrs = genai.request_attributes(req, req.model)
        usage = genai.usage_attributes(args.prompt_tokens, args.completion_tokens)
        attrs.update(usage)
        answer = self.first if req.stream else out.body
        response = genai.response_attributes(answer, self.reasons or _reasons(out.body))
        attrs.update(response)
        attrs.update({
            "turnout.request_id": req.request_id, "turnout.team": ctx.principal.team,
            "turnout.stream": req.stream, "turnout.retries": out.retries,
            "turnout.cache": out.cache.decode() if out.cache is not None else "off",
            "turnout.cost_usd": to_usd(args.cost_nanos), "turnout.estimated_usage": args.estimated,
            "http.response.status_code": out.status})
        if out.deployment is not None:
            attrs["turnout.deployment"] = out.deployment.id
            attrs["gen_ai.provider.name"] = genai.provider_name(out.deployment)
        if plan is not None:
            attrs["turnout.policy"] = plan.policy
            attrs["turnout.reason"] = plan.reason
        if self.capture:
            attrs["gen_ai.input.messages"] = genai.input_messages(req)
            attrs["gen_ai.output.messages"] = (
                genai.output_messages(read_partial(self.seen or []).text) if req.stream
                else genai.body_output_messages(out.body or b""))
        span.set_attributes(attrs)
        if self.winner is not None:
            winner, end = self.winner
            winner.set_attributes(usage)
            winner.set_attributes(response)
            winner.end(end)
            self.winner = None
        self._end(req, out.status, None)

    def refused(self, status: int, code: str | None, req: CanonicalRequest | None,
                principal: Principal | None) -> None:
        if req is not None:
            self.span.set_attributes(genai.request_attributes(req, req.model))
            self.span.set_attribute("turnout.request_id", req.request_id)
        if principal is not None:
            self.span.set_attribute("turnout.team", principal.team)
        self.span.set_attribute("http.response.status_code", status)
        self._end(req, status, code)

    def _end(self, req: CanonicalRequest | None, status: int, code: str | None) -> None:
        span = self.span
        if req is not None:
            span.update_name(f"{genai.OPERATION[self.op]} {req.model}")
        if status >= 400:
            span.set_attribute("error.type", code or str(status))
            if status >= 500:  # server spans: only 5xx are errors of ours (semconv)
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        if self._token is not None:
            context.detach(self._token)  # type: ignore[arg-type]
            self._token = None


def _reasons(body: bytes | None) -> list[str]:
    return genai.finish_reasons(body) if body else []
