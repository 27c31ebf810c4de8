"""The request pipeline: the one place that knows the order of the steps.

surface → authenticate → cache lookup → admit (limits, budgets) → plan (routing) →
dispatch → respond → settle (metering, cache store). The cache is looked up before
admission so that a hit is admitted as one: it counts against RPM but reserves no tokens
or budget (gateway/admission.py). A hit needs no routing; the surface replays it.
"""

from __future__ import annotations

from gateway.accounts import Accounts
from gateway.admission import Admission
from gateway.cache import ResponseCache
from gateway.cache.policy import RawHeaders
from gateway.canonical import CanonicalRequest, Deployment
from gateway.dispatch import Completed, Dispatcher, UpstreamStream
from gateway.errors import GatewayError
from gateway.metering import Meter, Ticket
from gateway.registry import Registry
from gateway.routing import Router
from policies.keys import Principal
from policies.routing.base import Plan, RouteHints


class Pipeline:
    def __init__(self, registry: Registry, router: Router, dispatcher: Dispatcher,
                 accounts: Accounts, admission: Admission, meter: Meter,
                 cache: ResponseCache | None = None) -> None:
        self.registry = registry
        self.router = router
        self.dispatcher = dispatcher
        self.accounts = accounts
        self.admission = admission
        self.meter = meter
        self.cache = cache  # None: no model or team is cached, the cache costs nothing

    def deployments(self, model: str) -> list[Deployment]:
        deps = self.registry.models.get(model)
        if not deps:
            raise GatewayError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        return deps

    async def authenticate(self, authorization: bytes | None,
                           api_key: bytes | None = None) -> Principal:
        return await self.accounts.authenticate(authorization, api_key)

    def models(self, principal: Principal) -> list[str]:
        return [m for m in self.registry.models if principal.may_use(m)]

    async def admit(self, principal: Principal, req: CanonicalRequest,
                    headers: RawHeaders = ()) -> tuple[Ticket, Plan]:
        """Everything before dispatch: the model exists and is allowed, the response cache
        is asked (`headers`: the request's, for its cache directives), limits and budget
        admit it (reserved), and the plan. A cache hit (`ticket.cache_hit`) gets a plan
        with no candidates. The ticket must reach `settle`."""
        deps = self.deployments(req.model)
        if not principal.may_use(req.model):
            raise GatewayError(403, f"Your key may not use the model `{req.model}`.",
                               code="model_not_allowed", param="model")
        cache = self.cache
        cached = await cache.lookup(principal, req, headers) if cache is not None else None
        hit = cached is not None and cached.entry is not None
        # A fallback may only be a model the key may use, and the budget reservation covers
        # the dearest deployment the request could end up on, fallbacks included.
        req.allowed_models = principal.models
        reserve_for = deps + [d for m in self.registry.fallback_models(req.model)
                              if principal.may_use(m) for d in self.registry.models.get(m, ())]
        try:
            ticket = await (self.admission.admit_hit(principal, req) if hit
                            else self.admission.admit(principal, req, reserve_for))
        except BaseException:
            if cache is not None and cached is not None:
                cache.abandon(cached)  # a miss that was to lead: a waiter leads instead
            raise
        if cache is not None and cached is not None:
            cache.admitted(cached, ticket)
            if hit:
                return ticket, Plan([], "cache", "cache hit")
        req.prompt_tokens = ticket.prompt_estimate
        hints = RouteHints(prompt_tokens=ticket.prompt_estimate, max_tokens=ticket.max_output)
        plan = self.router.plan(req, deps, hints, team_slo_ms=principal.slo_ttft_ms,
                                team_priority=principal.priority)
        return ticket, plan

    async def complete(self, req: CanonicalRequest, plan: Plan) -> Completed:
        return await self.dispatcher.complete(req, plan)

    async def open_stream(self, req: CanonicalRequest, plan: Plan) -> UpstreamStream:
        return await self.dispatcher.open_stream(req, plan)

    def settle(self, ticket: Ticket) -> None:
        if ticket.cache is not None and self.cache is not None:
            self.cache.finish(ticket)  # stores a successful miss, in the background
        self.meter.settle(ticket)
