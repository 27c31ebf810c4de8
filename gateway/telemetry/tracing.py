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
from typing import Any
from urllib.parse import unquote

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from gateway.accounting.metering import Outcome, RequestContext
from gateway.canonical import CanonicalRequest, Deployment, Operation
from gateway.config.telemetry import TracingConfig
from gateway.dispatch.continuation import read_partial
from gateway.http.asgi import Scope
from gateway.store import SettleArgs
from gateway.telemetry import genai
from gateway.telemetry.otlp import Envelope, OtlpExport, Sender, Target
from gateway.telemetry.spans import LeanSpan, Tracer, readable, sampler_from
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


def _env_headers(raw: str | None) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS: `name=value` pairs, comma-separated, URL-encoded."""
    out = {}
    for pair in (raw or "").split(","):
        name, eq, value = pair.partition("=")
        if eq and name.strip():
            out[unquote(name.strip()).lower()] = unquote(value.strip())
    return out


def otlp_target(cfg: TracingConfig) -> Target:
    """Where OTLP/HTTP goes, from the config, else the standard OTEL_EXPORTER_OTLP_*."""
    url = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")  # the full URL, used as it is
    if cfg.endpoint is not None or url is None:
        base = cfg.endpoint or _env("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
        # A base URL, as the variable takes; one that names the path already is kept.
        url = base if base.rstrip("/").endswith("/v1/traces") \
            else base.rstrip("/") + "/v1/traces"
    headers = cfg.headers or _env_headers(_env("OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                                               "OTEL_EXPORTER_OTLP_HEADERS"))
    compression = _env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
    try:
        timeout_s = float(_env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                               "OTEL_EXPORTER_OTLP_TIMEOUT") or 10)
    except ValueError:
        timeout_s = 10.0
    return Target(url, headers, compression == "gzip", timeout_s,
                  _env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"))


def sdk_processor(cfg: TracingConfig) -> SpanProcessor | None:
    """The exporters that stay the SDK's, behind its processors (our spans are converted
    for them): the console's and OTLP/gRPC (gRPC is heavy: imported only when used)."""
    kind = cfg.exporter or _env("OTEL_TRACES_EXPORTER") or "otlp"
    if kind == "none":
        return None
    if kind == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())
    if _protocol(cfg) != "grpc":
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    return BatchSpanProcessor(GrpcExporter(endpoint=cfg.endpoint, headers=cfg.headers or None))


def _protocol(cfg: TracingConfig) -> str:
    return cfg.protocol or _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"


def _resource(cfg: TracingConfig) -> Resource:
    attrs: dict[str, Any] = {}
    if cfg.service_name:
        attrs["service.name"] = cfg.service_name
    elif not _env("OTEL_SERVICE_NAME"):
        attrs["service.name"] = "turnout"
    return Resource.create(attrs)  # with OTEL_RESOURCE_ATTRIBUTES and the SDK's own


class Tracing:
    """Lean spans (`spans.py`), sent over OTLP/HTTP by our own exporter (`otlp.py`) or
    given, converted, to SDK span processors (the console and gRPC exporters; tests)."""

    def __init__(self, cfg: TracingConfig) -> None:
        self.resource = _resource(cfg)
        self.processors: list[SpanProcessor] = []
        self.export: OtlpExport | None = None
        kind = cfg.exporter or _env("OTEL_TRACES_EXPORTER") or "otlp"
        if kind == "otlp" and _protocol(cfg) != "grpc":
            self.export = OtlpExport(Sender(otlp_target(cfg), Envelope.of(self.resource)))
        processor = sdk_processor(cfg)
        if processor is not None:
            self.processors.append(processor)
        parent_based, ratio = sampler_from(cfg.sample_ratio)
        self.tracer = Tracer(self._ended, parent_based=parent_based, ratio=ratio)
        self.capture_teams = frozenset(cfg.capture_content)

    @classmethod
    def build(cls, cfg: TracingConfig) -> Tracing | None:
        """Tracing as configured; None when it is off."""
        if not cfg.enabled or (_env("OTEL_SDK_DISABLED") or "").lower() == "true":
            return None
        return cls(cfg)

    def add_span_processor(self, processor: SpanProcessor) -> None:
        self.processors.append(processor)

    def _ended(self, span: LeanSpan) -> None:
        if self.export is not None:
            self.export(span)
        if self.processors:
            done = readable(span, self.resource)
            for processor in self.processors:
                processor.on_end(done)

    def begin(self, scope: Scope, op: Operation) -> RequestTrace:
        return RequestTrace(self, scope, op)

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush what is batched and stop. The export may block for its whole timeout
        when the collector is unreachable, so it runs on a thread of its own (a daemon:
        it never holds up the process's exit) and is waited for `timeout_s` at most."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        if self.export is not None:
            self.export.flush()  # on the loop: the batch it owns goes to the sender

        def flush() -> None:
            try:
                if self.export is not None:
                    self.export.sender.close(timeout_s)
                for processor in self.processors:
                    processor.shutdown()
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

    def note(self, data: bytes) -> None:
        """A streamed chunk (the pipeline calls this for each while recording): its id and
        model (the first), finish reasons, and the text when capturing content."""
        if self.first is None:
            self.first = data
        # Most chunks carry `"finish_reason":null` alone: no scan for those.
        if data.count(b'"finish_reason"') != data.count(b'"finish_reason":null'):
            self.reasons += genai.finish_reasons(data)
        if self.seen is not None:
            self.seen.append(data)

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
