"""The request pipeline: the one place that knows the order of the steps.

surface → plan (routing) → dispatch → respond. Authentication, admission, cache and
settlement slot in here as they land (see DESIGN.md, "One request, end to end").
"""

from __future__ import annotations

from gateway.canonical import CanonicalRequest, Deployment
from gateway.dispatch import Completed, Dispatcher, UpstreamStream
from gateway.errors import GatewayError
from gateway.registry import Registry
from policies.routing.base import Plan, RoutingPolicy


class Pipeline:
    def __init__(self, registry: Registry, policy: RoutingPolicy, dispatcher: Dispatcher) -> None:
        self.registry = registry
        self.policy = policy
        self.dispatcher = dispatcher

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

    def plan(self, req: CanonicalRequest) -> Plan:
        return self.policy.plan(req, self.deployments(req.model))

    async def complete(self, req: CanonicalRequest, plan: Plan) -> Completed:
        return await self.dispatcher.complete(req, plan)

    async def open_stream(self, req: CanonicalRequest, plan: Plan) -> UpstreamStream:
        return await self.dispatcher.open_stream(req, plan)
