"""Model registry: public model name → the deployments that can serve it.

Each provider is one deployment per model; each pool replica is one deployment per
model, identified by its address (`pool/host:port`) so the id survives membership
changes. Pool membership can change at runtime (DNS discovery): `set_members` swaps in
a rebuilt model table in one assignment, so a request sees the old or the new one.
"""

from __future__ import annotations

from adapters import get_adapter
from gateway.canonical import Deployment, Target
from gateway.config import Config
from gateway.config.upstreams import DeploymentConfig, Price, Provider
from gateway.wire.tls import Egress


def provider_base(provider: Provider, simulated: dict[str, list[str]]) -> tuple[str, str | None]:
    """(OpenAI base URL, api key): the simulator's when the provider runs simulated."""
    sim = simulated.get(provider.name)
    if sim:
        return sim[0] + "/v1", None
    return provider.base_url, provider.api_key or None


def replica_id(pool: str, root: str) -> str:
    return f"{pool}/{root.split('://', 1)[-1]}"


class Registry:
    def __init__(self, cfg: Config, simulated: dict[str, list[str]]) -> None:
        self._cfg = cfg
        self._providers = {p.name: p for p in cfg.providers}
        self._pools = {p.name: p for p in cfg.pools}
        self.simulated = simulated  # target name → simulator server roots
        # Pool name → server roots. DNS-discovered pools start empty until resolved.
        self.members: dict[str, list[str]] = {
            p.name: simulated.get(p.name) or [e for e in p.endpoints
                                              if not e.startswith("dns://")]
            for p in cfg.pools}
        self.models: dict[str, list[Deployment]] = self._build()

    def fallback_models(self, model: str) -> tuple[str, ...]:
        """Every model a request for `model` may fail over to."""
        mc = self._cfg.models.get(model)
        if mc is None:
            return ()
        extra = (mc.context_window_fallback,) if mc.context_window_fallback else ()
        return (*mc.fallbacks, *extra)

    def egress(self) -> list[tuple[str, Egress]]:
        """(base URL, how to reach it) of each real provider with its own proxy, CA or
        client certificate: what the HTTP client applies by URL prefix."""
        return [(p.base_url, Egress(p.proxy, p.ca_file, p.client_cert, p.client_key))
                for p in self._providers.values() if p.name not in self.simulated
                and (p.proxy or p.ca_file or p.client_cert)]

    def set_members(self, pool: str, roots: list[str]) -> None:
        self.members = {**self.members, pool: sorted(roots)}
        self.models = self._build()

    def _build(self) -> dict[str, list[Deployment]]:
        return {name: [d for dc in mc.deployments for d in self._deployments(name, dc)]
                for name, mc in self._cfg.models.items()}

    def _deployments(self, model: str, dc: DeploymentConfig) -> list[Deployment]:
        pool = self._pools.get(dc.target)
        p = dc.price or (pool.price if pool else None) or Price()  # type: ignore[call-arg]
        if pool is not None:
            # vLLM speaks OpenAI's dialect and continues a prefill (continue_final_message).
            return [Deployment(replica_id(pool.name, root), model, "openai", target,
                               p.input, p.output, pool=pool.name, weight=dc.weight,
                               price_cached_input=p.cached_input,
                               price_cache_write=p.cache_write,
                               capabilities=get_adapter("openai").capabilities(target),
                               can_continue=pool.continuation, health_check="health",
                               adapter_path=dc.adapter)
                    for root in self.members[pool.name]
                    for target in [Target(base_url=root + "/v1", upstream_model=dc.model,
                                          options=_pool_options(pool.responses_api))]]
        prov = self._providers[dc.target]
        base, key = provider_base(prov, self.simulated)
        # A simulated stand-in speaks OpenAI's dialect whatever the real provider speaks.
        dialect = "openai" if prov.name in self.simulated else prov.dialect
        options = dict(prov.options)
        if prov.name in self.simulated:  # the simulator serves chat completions only
            options["responses_api"] = "translate"
        target = Target(base, dc.model, key, dict(prov.headers), options)
        capabilities = get_adapter(dialect).capabilities(target)
        can_continue = (prov.continuation if prov.continuation is not None
                        else capabilities.continues_prefill)
        return [Deployment(f"{prov.name}/{dc.model}", model, dialect, target,
                           p.input, p.output, weight=dc.weight,
                           price_cached_input=p.cached_input,
                           price_cache_write=p.cache_write, capabilities=capabilities,
                           can_continue=can_continue, health_check=prov.health_check)]


def _pool_options(responses_api: bool) -> dict[str, str]:
    """vLLM serves /v1/responses itself (the OpenAI adapter's `responses_api` option)."""
    return {"responses_api": "native" if responses_api else "translate"}
