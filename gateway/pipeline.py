"""The request pipeline: the one place that knows the order of the steps.

surface → authenticate → admit (limits, budgets) → plan (routing) → dispatch → respond
→ settle (metering). The cache slots in as it lands (see DESIGN.md, "One request, end
to end").
"""

from __future__ import annotations

from gateway.accounts import Accounts
from gateway.admission import Admission
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
                 accounts: Accounts, admission: Admission, meter: Meter) -> None:
        self.registry = registry
        self.router = router
        self.dispatcher = dispatcher
        self.accounts = accounts
        self.admission = admission
        self.meter = meter

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

    async def admit(self, principal: Principal, req: CanonicalRequest) -> tuple[Ticket, Plan]:
        """Everything before dispatch: the model exists and is allowed, limits and budget
        admit it (reserved), and the plan. The ticket must reach `settle`."""
        deps = self.deployments(req.model)
        if not principal.may_use(req.model):
            raise GatewayError(403, f"Your key may not use the model `{req.model}`.",
                               code="model_not_allowed", param="model")
        ticket = await self.admission.admit(principal, req, deps)
        hints = RouteHints(prompt_tokens=ticket.prompt_estimate, max_tokens=ticket.max_output)
        plan = self.router.plan(req, deps, hints, team_priority=principal.priority)
        return ticket, plan

    async def complete(self, req: CanonicalRequest, plan: Plan) -> Completed:
        return await self.dispatcher.complete(req, plan)

    async def open_stream(self, req: CanonicalRequest, plan: Plan) -> UpstreamStream:
        return await self.dispatcher.open_stream(req, plan)

    def settle(self, ticket: Ticket) -> None:
        self.meter.settle(ticket)
