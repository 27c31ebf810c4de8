"""Model registry: public model name → the deployments that can serve it."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.canonical import Deployment, Target
from gateway.config import Config, Pool, Provider


@dataclass(slots=True)
class Registry:
    models: dict[str, list[Deployment]]
    pool_endpoints: dict[str, list[str]] = field(default_factory=dict)  # server roots
    simulated: set[str] = field(default_factory=set)  # targets served by a simulator


def pool_members(pool: Pool, simulated: dict[str, list[str]]) -> list[str]:
    return simulated.get(pool.name) or pool.endpoints


def provider_base(provider: Provider, simulated: dict[str, list[str]]) -> tuple[str, str | None]:
    """(OpenAI base URL, api key): the simulator's when the provider runs simulated."""
    sim = simulated.get(provider.name)
    if sim:
        return sim[0] + "/v1", None
    return provider.base_url, provider.api_key or None


def build_registry(cfg: Config, simulated: dict[str, list[str]]) -> Registry:
    providers = {p.name: p for p in cfg.providers}
    pools = {p.name: p for p in cfg.pools}
    models: dict[str, list[Deployment]] = {}
    for name, mc in cfg.models.items():
        deps: list[Deployment] = []
        for dc in mc.deployments:
            price = (dc.price.input, dc.price.output)
            if dc.target in pools:
                for i, root in enumerate(pool_members(pools[dc.target], simulated)):
                    target = Target(base_url=root + "/v1", upstream_model=dc.model)
                    deps.append(Deployment(f"{dc.target}/{i}", name, "openai", target, *price,
                                           pool=dc.target))
            else:
                prov = providers[dc.target]
                base, key = provider_base(prov, simulated)
                target = Target(base, dc.model, key, dict(prov.headers))
                deps.append(Deployment(prov.name, name, prov.dialect, target, *price))
        models[name] = deps
    return Registry(
        models=models,
        pool_endpoints={p.name: pool_members(p, simulated) for p in cfg.pools},
        simulated=set(simulated),
    )
