"""Observability: OpenTelemetry traces, Prometheus metrics and the JSON access log.

Two ways in, both chosen by the services at construction:
- the stages, wrapped (`traced.py`: the cache lookup, admission, planning and each upstream
  attempt as child spans; `metrics.MeasuredConnection`: Redis round trips timed);
- the request itself, observed by the pipeline through `Telemetry`: it opens a request's
  trace (`begin`) and reports admission, refusals and settlement, the one point each
  admitted request passes exactly once.

Each part is None when switched off; with all three off, and the console off (its
recorder samples settled requests), the pipeline holds no `Telemetry` at all and pays
nothing per request.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from gateway.accounting.metering import Outcome, RequestContext
from gateway.canonical import CanonicalRequest, Operation
from gateway.config import Config
from gateway.dispatch.failover import Failover
from gateway.http.asgi import Scope
from gateway.store import SettleArgs
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import RequestTrace, Tracing
from policies.keys import Principal
from policies.routing.base import Plan

log = logging.getLogger("turnout.telemetry")


class SettledHook(Protocol):
    """Told of each admitted request once it settles (the console's recorder: it must be
    O(1) and must not raise)."""

    def settled(self, ctx: RequestContext, out: Outcome, args: SettleArgs,
                plan: Plan | None) -> None: ...


class Telemetry:
    def __init__(self, cfg: Config, tracing: Tracing | None, failover: Failover | None,
                 console: SettledHook | None = None) -> None:
        tc = cfg.telemetry
        self.tracing = tracing
        self.metrics = Metrics(cfg.models, failover) if tc.metrics else None
        self.access_log = AccessLog() if tc.access_log else None
        self.console = console  # None: the console is off
        self.active = bool(self.tracing or self.metrics or self.access_log or self.console)

    def begin(self, scope: Scope, op: Operation) -> RequestTrace | None:
        """The request's server span, current until it settles; None while tracing is off."""
        return self.tracing.begin(scope, op) if self.tracing is not None else None

    def admitted(self, ctx: RequestContext, trace: RequestTrace | None) -> None:
        if trace is not None:
            trace.admitted(ctx)
        if self.metrics is not None:
            self.metrics.admitted(ctx)

    def settled(self, ctx: RequestContext, out: Outcome, args: SettleArgs,
                trace: RequestTrace | None, plan: Plan | None) -> None:
        """Metrics, the access-log line, the end of the trace, the console's sample."""
        try:
            if self.metrics is not None:
                self.metrics.settled(ctx, out, args, time.monotonic())
            if self.access_log is not None:
                self.access_log.settled(args.event, trace.trace_id if trace else None)
            if trace is not None:
                trace.finish(ctx, out, args, plan)
            if self.console is not None:
                self.console.settled(ctx, out, args, plan)
        except Exception:  # never let telemetry fail a request
            log.exception("telemetry failed for request %s", ctx.req.request_id)

    def refused(self, rid: str, status: int, code: str | None, started: float,
                req: CanonicalRequest | None, principal: Principal | None,
                trace: RequestTrace | None) -> None:
        """A request answered without being admitted (or failing before it was)."""
        try:
            if self.metrics is not None:
                self.metrics.refused(req.model if req else None, status)
            if self.access_log is not None:
                self.access_log.refused(rid, status, code, started, req, principal,
                                        trace.trace_id if trace else None)
            if trace is not None:
                trace.refused(status, code, req, principal)
        except Exception:
            log.exception("telemetry failed for request %s", rid)

    async def shutdown(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()
        if self.tracing is not None:
            await self.tracing.shutdown()
