"""The pipeline's stages with child spans: the cache lookup, admission, the routing
decision, each upstream attempt. Decorators that the services wrap around the stages only
when tracing is on, so the stages themselves carry no tracing code and cost nothing extra
when it is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from gateway.accounting.admission import AdmissionStage
from gateway.accounting.metering import RequestContext
from gateway.cache import CacheStage, CacheTicket
from gateway.cache.policy import RawHeaders
from gateway.canonical import CanonicalRequest, Deployment, UpstreamFailure, UpstreamRequest
from gateway.dispatch.attempts import Attempt
from gateway.errors import GatewayError
from gateway.planner import PlanStage
from gateway.telemetry import genai
from gateway.telemetry.tracing import RequestTrace, current
from policies.breakers import Breaker
from policies.keys import Principal
from policies.routing.base import Plan, RouteHints
from policies.scoreboard import Scoreboard


def _sampled_out() -> bool:
    """The request this runs for is not recorded: its steps run unwrapped, no span."""
    request = current()
    return request is not None and not request.recording


class _Step:
    """A span for one step; a refusal (`GatewayError`) marks it failed, with its code.
    Not made current: a step has no child spans, and that saves a context switch. (A
    class, not a @contextmanager generator: three steps a request, at a third the cost.)"""

    __slots__ = ("span",)

    def __init__(self, tracer: Tracer, name: str) -> None:
        self.span = tracer.start_span(name)

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        span = self.span
        if isinstance(err, GatewayError):
            span.set_attribute("error.type", err.code or str(err.status))
            span.set_status(Status(StatusCode.ERROR, err.message))
        span.end()


class TracedAdmission:
    """Admission with a span."""

    def __init__(self, inner: AdmissionStage, tracer: Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    async def admit(self, principal: Principal, req: CanonicalRequest,
                    deployments: Sequence[Deployment]) -> RequestContext:
        if _sampled_out():
            return await self._inner.admit(principal, req, deployments)
        with _Step(self._tracer, "turnout.admission") as span:
            span.set_attribute("turnout.team", principal.team)
            ctx = await self._inner.admit(principal, req, deployments)
            span.set_attribute("turnout.reserved_tokens", ctx.reserved_tokens)
            return ctx

    async def admit_hit(self, principal: Principal, req: CanonicalRequest) -> RequestContext:
        if _sampled_out():
            return await self._inner.admit_hit(principal, req)
        with _Step(self._tracer, "turnout.admission") as span:
            span.set_attribute("turnout.team", principal.team)
            return await self._inner.admit_hit(principal, req)


class TracedCache:
    """The response cache with its lookup as a span."""

    def __init__(self, inner: CacheStage, tracer: Tracer) -> None:
        self._inner = inner
        self._tracer = tracer
        self.admitted = inner.admitted
        self.abandon = inner.abandon
        self.finish = inner.finish

    async def lookup(self, principal: Principal, req: CanonicalRequest,
                     headers: RawHeaders) -> CacheTicket | None:
        if _sampled_out():
            return await self._inner.lookup(principal, req, headers)
        with _Step(self._tracer, "turnout.cache") as span:
            found = await self._inner.lookup(principal, req, headers)
            span.set_attribute("turnout.cache.result",
                               found.outcome.decode() if found is not None else "off")
            return found


class TracedPlanner:
    """The routing decision as a span: every candidate with its score, the choice, why."""

    def __init__(self, inner: PlanStage, tracer: Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment], hints: RouteHints,
             *, team_slo_ms: float | None = None, team_priority: int = 0,
             shed: bool = True) -> Plan:
        if _sampled_out():
            return self._inner.plan(req, deployments, hints, team_slo_ms=team_slo_ms,
                                    team_priority=team_priority, shed=shed)
        with _Step(self._tracer, "turnout.route") as span:  # a shed request: 429 on it
            plan = self._inner.plan(req, deployments, hints, team_slo_ms=team_slo_ms,
                                    team_priority=team_priority, shed=shed)
            attrs: genai.Attributes = {
                "gen_ai.request.model": req.model, "turnout.policy": plan.policy,
                "turnout.reason": plan.reason, "turnout.choice": plan.candidates[0].id,
                "turnout.candidates": [d.id for d in plan.candidates],
                "turnout.scores": [f"{k}={v:.6g}" for k, v in plan.scores.items()],
                "turnout.meets_slo": plan.meets_slo}
            if plan.predicted_ttft_s is not None:
                attrs["turnout.predicted_ttft_s"] = plan.predicted_ttft_s
            if hints.slo_ttft_s is not None:
                attrs["turnout.slo_ttft_s"] = hints.slo_ttft_s
            span.set_attributes(attrs)
            return plan


class TracedAttempt(Attempt):
    """An attempt whose report (exactly once: success or failure) ends its span."""

    __slots__ = ("request", "span")

    def __init__(self, board: Scoreboard, deployment: Deployment, breaker: Breaker | None,
                 probe: bool, span: Span, request: RequestTrace | None) -> None:
        super().__init__(board, deployment, breaker, probe)
        self.span = span
        self.request = request

    def succeeded(self, chunks: int = 0) -> None:
        super().succeeded(chunks)
        self._first_token()
        self.span.set_attribute("turnout.outcome", "ok")
        if self.request is not None and self.request.open:
            self.request.won(self.span)  # ended with the request, with the answer's attributes
        else:
            self.span.end()

    def failed(self, err: BaseException) -> None:
        if self.reported:
            return
        super().failed(err)
        self._first_token()
        span = self.span
        if isinstance(err, UpstreamFailure):
            span.set_attributes({"turnout.outcome": "failed", "error.type": err.kind.value})
            if err.status is not None:
                span.set_attribute("http.response.status_code", err.status)
            span.set_status(Status(StatusCode.ERROR, err.message))
        else:  # the client went away, or a hedge lost
            span.set_attribute("turnout.outcome", "cancelled")
        span.end()

    def _first_token(self) -> None:
        if self.ttft is not None:
            self.span.set_attribute("turnout.ttft_s", self.ttft)
            start = getattr(self.span, "start_time", None)  # the SDK's span records it
            when = start + int(self.ttft * 1e9) if start is not None else None
            self.span.add_event("gen_ai.first_token", {"turnout.ttft_s": self.ttft}, when)


class TracedAttempts:
    """Makes each upstream attempt's record (`NewAttempt`) with a CLIENT span, and sends
    its W3C trace context upstream."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def __call__(self, board: Scoreboard, dep: Deployment, breaker: Breaker | None,
                 probe: bool, ureq: UpstreamRequest) -> Attempt:
        request = current()
        if request is not None and not request.recording:
            # Sampled out: no span, but the upstream still gets the trace (unsampled).
            propagate.inject(ureq.headers, context=request.context)
            return Attempt(board, dep, breaker, probe)
        attrs = genai.attempt_attributes(dep, request.next_attempt() if request else 1, probe)
        if request is not None:
            attrs.update(request.attempt_attributes(dep))
        span = self._tracer.start_span(f"{attrs.get('gen_ai.operation.name', 'chat')} "
                                       f"{dep.target.upstream_model}", kind=SpanKind.CLIENT,
                                       attributes=attrs)
        propagate.inject(ureq.headers, context=trace.set_span_in_context(span))
        return TracedAttempt(board, dep, breaker, probe, span, request)
