"""The lane's pipeline: the interactive pipeline's own stages (authenticator, cache,
admission, planner, dispatcher, telemetry), so every line is admitted, routed, failed
over, traced and counted like an interactive request, with two differences, composed here
once: admission marks each line's context with the batch discount, and settlements are
held for the lane instead of queued, so a line's settlement is applied in the same atomic
store step as its first result (store/batch_base.py): exactly once, crashes included."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gateway.accounting.admission import AdmissionStage
from gateway.accounting.metering import Meter, Outcome, RequestContext, settlement
from gateway.canonical import CanonicalRequest, Deployment
from gateway.pipeline import Pipeline
from gateway.store import SettleArgs
from policies.keys import Principal


class DiscountedAdmission:
    """Admission as it is; the context it returns carries the lane's price factor."""

    def __init__(self, inner: AdmissionStage, price_factor: float) -> None:
        self.inner = inner
        self.price_factor = price_factor

    async def admit(self, principal: Principal, req: CanonicalRequest,
                    deployments: Sequence[Deployment]) -> RequestContext:
        ctx = await self.inner.admit(principal, req, deployments)
        return replace(ctx, price_factor=self.price_factor)

    async def admit_hit(self, principal: Principal, req: CanonicalRequest) -> RequestContext:
        return replace(await self.inner.admit_hit(principal, req),
                       price_factor=self.price_factor)


class HeldSettlements(Meter):
    """Settlements computed as for any request, then held by request id for the lane
    (`take`), never queued to the store by this meter."""

    def __init__(self, meter: Meter) -> None:
        super().__init__(meter.store)
        self.held: dict[str, SettleArgs] = {}

    def settle(self, ctx: RequestContext, out: Outcome) -> SettleArgs:
        args = settlement(ctx, out)
        self.held[ctx.req.request_id] = args
        return args

    def take(self, request_id: str) -> SettleArgs | None:
        return self.held.pop(request_id, None)


def lane_pipeline(p: Pipeline, price_factor: float) -> tuple[Pipeline, HeldSettlements]:
    held = HeldSettlements(p.meter)
    lane = Pipeline(registry=p.registry, authenticator=p.authenticator, cache=p.cache,
                    admission=DiscountedAdmission(p.admission, price_factor),
                    planner=p.planner, dispatcher=p.dispatcher, meter=held,
                    telemetry=p.telemetry, loop=p.loop, max_body=p.max_body)
    return lane, held
