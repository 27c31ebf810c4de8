"""Observability: OpenTelemetry traces, Prometheus metrics and the JSON access log.

`Telemetry` is all the rest of the gateway sees of it. Services build the pipeline through
it (the traced step classes replace the plain ones only while tracing is on); the surface
opens a request's trace and reports admission and refusals; the meter reports every
settlement, the one point each admitted request passes exactly once. Each part is None
when switched off, and then costs one attribute check per request.
"""

from __future__ import annotations

import logging
import time

from gateway.admission import Admission
from gateway.cache import ResponseCache
from gateway.canonical import CanonicalRequest
from gateway.config import AdmissionConfig, Config
from gateway.dispatch import Dispatcher
from gateway.failover import Failover
from gateway.leases import Leases
from gateway.metering import Ticket
from gateway.routing import Router
from gateway.store import SettleArgs, Store
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import Metrics, measure_store
from gateway.telemetry.traced import TracedAdmission, TracedCache, TracedRouter, TracedRunner
from gateway.telemetry.tracing import RequestTrace, Tracing, build_provider
from policies.keys import Principal
from policies.routing.base import Plan
from policies.scoreboard import Scoreboard

log = logging.getLogger("turnout.telemetry")


class Telemetry:
    def __init__(self, cfg: Config) -> None:
        tc = cfg.telemetry
        provider = build_provider(tc.tracing)
        self.tracing = Tracing(tc.tracing, provider) if provider is not None else None
        self.metrics = Metrics(cfg.models) if tc.metrics else None
        self.access_log = AccessLog() if tc.access_log else None
        self.active = bool(self.tracing or self.metrics or self.access_log)

    # -- building the pipeline ------------------------------------------------------------

    def router(self, cfg: Config, board: Scoreboard) -> Router:
        if self.tracing is None:
            return Router(cfg, board)
        return TracedRouter(cfg, board, self.tracing.tracer)

    def admission(self, store: Store, cfg: AdmissionConfig, total_timeout_s: float) -> Admission:
        if self.tracing is None:
            return Admission(store, cfg, total_timeout_s)
        admission = TracedAdmission(store, cfg, total_timeout_s)
        admission.tracer = self.tracing.tracer
        return admission

    def measure(self, store: Store) -> None:
        """Redis latency and errors, while metrics are on."""
        if self.metrics is not None:
            measure_store(store, self.metrics)

    def cache(self, store: Store, cfg: Config) -> ResponseCache | None:
        """The response cache (None: nothing is cached), its lookup a span when tracing."""
        if self.tracing is None:
            return ResponseCache.build(store, cfg)
        cache = TracedCache.build(store, cfg)
        if isinstance(cache, TracedCache):
            cache.tracer = self.tracing.tracer
        return cache

    def watch_leases(self, leases: Leases) -> None:
        if self.metrics is not None:
            self.metrics.watch_leases(leases)

    def instrument(self, dispatcher: Dispatcher, failover: Failover | None) -> None:
        if self.tracing is not None:
            dispatcher.runner = TracedRunner(dispatcher.runner, self.tracing.tracer)
        if self.metrics is not None:
            self.metrics.watch(failover)  # its counters and circuit states, exported

    # -- per request ----------------------------------------------------------------------

    def admitted(self, ticket: Ticket, plan: Plan, trace: RequestTrace | None) -> None:
        if trace is not None:
            ticket.trace = trace
            trace.admitted(ticket, plan)
        if self.metrics is not None:
            self.metrics.admitted(ticket.req.model)

    def settled(self, ticket: Ticket, args: SettleArgs) -> None:
        """The meter's observer: metrics, the access-log line, the end of the trace."""
        try:
            trace: RequestTrace | None = ticket.trace
            if self.metrics is not None:
                self.metrics.settled(ticket, args, time.monotonic())
            if self.access_log is not None:
                self.access_log.settled(args.event, trace.trace_id if trace else None)
            if trace is not None:
                trace.finish(ticket, args)
        except Exception:  # never let telemetry fail a request
            log.exception("telemetry failed for request %s", ticket.req.request_id)

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
