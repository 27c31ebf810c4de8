"""Model fallbacks: once a model's deployments are exhausted, the models it names in
`fallbacks` are tried in order, each routed by its own policy; a request too long for the
model's context goes to its `context_window_fallback`.

The fallback request keeps the client's body and changes only the public model name
(which selects the routing, the deployments and so the upstream model names). It is
planned without load shedding: a request already failing over is not turned away for
being low priority.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.canonical import CanonicalRequest
from gateway.config import Config
from gateway.planner import PlanStage
from gateway.registry import Registry
from policies.pricing import max_output_tokens, prompt_tokens
from policies.routing.base import Plan, RouteHints


class Fallbacks:
    def __init__(self, cfg: Config, registry: Registry, planner: PlanStage) -> None:
        self._registry = registry
        self._planner = planner
        self._default_max = cfg.admission.default_max_tokens
        self._chains = {m: tuple(mc.fallbacks) for m, mc in cfg.models.items()}
        self._context = {m: mc.context_window_fallback for m, mc in cfg.models.items()}

    def chain(self, model: str) -> tuple[str, ...]:
        return self._chains.get(model, ())

    def context_model(self, model: str) -> str | None:
        return self._context.get(model)

    def plan(self, req: CanonicalRequest, model: str) -> tuple[CanonicalRequest, Plan] | None:
        """The request as `model` and its plan; None when `model` has no deployment now
        or the request's key may not use it."""
        deployments = self._registry.models.get(model)
        if not deployments or (req.allowed_models and model not in req.allowed_models):
            return None
        as_model = replace(req, model=model)
        hints = RouteHints(prompt_tokens=prompt_tokens(req.operation, req.body),
                           max_tokens=max_output_tokens(req.operation, req.body,
                                                        self._default_max))
        return as_model, self._planner.plan(as_model, deployments, hints, shed=False)
