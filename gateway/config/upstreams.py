"""Where requests go: `providers` (external APIs), `pools` (self-hosted vLLM) and
`models` (each a list of deployments on them, with its routing, cache and fallbacks)."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.base import Strict, http_url
from gateway.config.cache import ModelCacheSettings
from gateway.config.routing import HedgingConfig, RoutingConfig
from gateway.wire.proxy import DIRECT, parse_proxy

Dialect = Literal["openai", "anthropic", "gemini"]
SimProfileName = Literal["instant", "fast-gpu", "slow-gpu", "cloud"]


class Simulate(Strict):
    """Run an in-process simulator instead of a real upstream (demo and tests)."""

    profile: SimProfileName = "fast-gpu"
    replicas: int = Field(1, ge=1, le=16)
    # With the pool's `kv_events`: each simulated replica's KV cache, in blocks of
    # `block_size` tokens, whose events it publishes as vLLM does.
    kv_blocks: int = Field(4096, ge=1)
    block_size: int = Field(16, ge=1)


class LoraSettings(Strict):
    """A pool's LoRA adapters (deployments with `adapter`)."""

    # Load an adapter no replica has on the least-loaded one (POST /v1/load_lora_adapter;
    # the replicas need VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
    dynamic_loading: bool = False
    refresh_s: float = Field(5.0, gt=0, description="how often /v1/models is read")


class KvEventsReplica(Strict):
    port: int = Field(ge=1, le=65535)
    replay_port: int = Field(ge=1, le=65535)


class KvEvents(Strict):
    """A pool whose replicas publish their KV-cache events (vLLM's `--kv-events-config`
    with the ZMQ publisher): routing can then see what each replica has cached."""

    port: int = Field(5557, ge=1, le=65535, description="each replica's event endpoint port")
    replay_port: int = Field(5558, ge=1, le=65535, description="its replay endpoint port")
    # Replicas that share a host (so not the ports above), by server root.
    replicas: dict[str, KvEventsReplica] = {}
    topic: str = ""
    # The served model's Hugging Face tokenizer directory (tokenizer.json and its chat
    # template): how requests are keyed. Simulated pools use the simulator's tokenizer.
    tokenizer: str | None = None
    # The replicas' --prefix-caching-hash-algo, and their PYTHONHASHSEED if set (vLLM's
    # default seed otherwise). xxhash is not supported (its seed is random per process).
    hash_algo: Literal["sha256", "sha256_cbor"] = "sha256"
    hash_seed: str | None = None
    heartbeat_s: float = Field(2.0, gt=0, description="replay requests check the stream")

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, v: str | None) -> str | None:
        if v and not os.path.isfile(os.path.join(v, "tokenizer.json")):
            raise ValueError(f"no tokenizer.json in {v}")
        return v or None

    @field_validator("replicas")
    @classmethod
    def _roots(cls, v: dict[str, KvEventsReplica]) -> dict[str, KvEventsReplica]:
        return {http_url(root): ports for root, ports in v.items()}


# Well-known hosts: `preset: groq` fills in the dialect and base URL (both overridable).
PRESETS: dict[str, tuple[Dialect, str]] = {
    "openai": ("openai", "https://api.openai.com/v1"),
    "anthropic": ("anthropic", "https://api.anthropic.com/v1"),
    "gemini": ("gemini", "https://generativelanguage.googleapis.com/v1beta"),
    "together": ("openai", "https://api.together.xyz/v1"),
    "groq": ("openai", "https://api.groq.com/openai/v1"),
    "fireworks": ("openai", "https://api.fireworks.ai/inference/v1"),
    "deepseek": ("openai", "https://api.deepseek.com/v1"),
    "mistral": ("openai", "https://api.mistral.ai/v1"),
    "openrouter": ("openai", "https://openrouter.ai/api/v1"),
    "deepinfra": ("openai", "https://api.deepinfra.com/v1/openai"),
}


class Provider(Strict):
    name: str
    preset: str | None = Field(None, description=f"one of: {', '.join(PRESETS)}")
    dialect: Dialect = "openai"
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    # Dialect knobs: Azure `api_version` + `auth: api-key`; Anthropic `anthropic_version`,
    # `max_tokens_default`.
    options: dict[str, str] = {}
    # Simulated stand-in used when api_key resolves empty, so the demo runs keyless.
    simulate_without_key: SimProfileName | None = None
    # Mid-stream continuation (a partial answer as an assistant message to continue):
    # default yes for the anthropic dialect (prefill), no for plain OpenAI-compatible hosts.
    continuation: bool | None = None
    # Active health check while its circuit is open: a 1-token chat request, GET {base}/models
    # (no tokens, but a weaker signal), or none (half-open after the cooldown regardless).
    health_check: Literal["chat", "models", "off"] = "chat"
    # How it is reached (gateway/wire/proxy.py, tls.py): an http:// proxy URL (credentials
    # as ${ENV}), "direct", or unset for HTTP(S)_PROXY / NO_PROXY; a PEM CA bundle trusted
    # instead of the system's; a client certificate (and key, unless in the same file).
    proxy: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v and v != DIRECT:
            parse_proxy(v)  # its errors never quote the URL (it may hold credentials)
        return v or None

    @field_validator("ca_file", "client_cert", "client_key")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        if v and not os.path.isfile(v):
            raise ValueError(f"no such file: {v}")
        return v or None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> Provider:
        if self.client_key and not self.client_cert:
            raise ValueError("client_key: needs client_cert")
        return self

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        preset = PRESETS.get(data["preset"])
        if preset is None:
            raise ValueError(f"unknown preset {data['preset']!r} (known: {', '.join(PRESETS)})")
        return {"dialect": preset[0], "base_url": preset[1], **data}

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return http_url(v)


class Price(Strict):
    """USD per 1M tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)
    cached_input: float | None = Field(None, ge=0, description=(
        "input read from the provider's prompt cache; default: the input price"))
    cache_write: float | None = Field(None, ge=0, description=(
        "input written to the provider's prompt cache (Anthropic: 1.25x input for 5-minute"
        " entries); default: the input price"))


class Pool(Strict):
    name: str
    # Server roots (http://host:8000) or `dns://name:port`: every A record of `name` is
    # a replica, re-resolved every `dns_interval_s` (a Kubernetes headless Service).
    endpoints: list[str] = []
    simulate: Simulate | None = None
    # The internal price of running on this pool, for deployments that set none.
    price: Price | None = None
    resolver: str | None = Field(None, description="DNS server host:port; default: system's")
    dns_interval_s: float = Field(10.0, gt=0)
    probe_interval_s: float = Field(2.0, gt=0, description="/health probes")
    scrape_interval_s: float = Field(1.0, gt=0, description="/metrics scrapes")
    max_num_seqs: int | None = Field(None, ge=1, description=(
        "each replica's vLLM --max-num-seqs: routing's capacity until a scrape shows a queue"
        " and it is learned; unset: learned only"))
    continuation: bool = Field(True, description="vLLM continue_final_message for failover")
    responses_api: bool = Field(True, description=(
        "/v1/responses requests go to vLLM's own /v1/responses (false: translated to chat"
        " completions, for vLLM before 0.10)"))
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings())  # type: ignore[call-arg]
    kv_events: KvEvents | None = Field(None, description=(
        "the replicas publish KV-cache events: the kv-aware routing step reads them"))

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [u if u.startswith("dns://") else http_url(u) for u in v]

    @model_validator(mode="after")
    def _has_members(self) -> Pool:
        if not self.endpoints and self.simulate is None:
            raise ValueError("a pool needs `endpoints` or `simulate`")
        if self.kv_events is not None and self.simulate is None and not self.kv_events.tokenizer:
            raise ValueError("kv_events: needs `tokenizer` (the model's tokenizer directory)")
        return self


class DeploymentConfig(Strict):
    target: str = Field(description="name of a provider or pool")
    model: str = Field(description="the model name the upstream knows")
    price: Price | None = Field(None, description="default: the pool's price, else free")
    weight: float = Field(1.0, gt=0, description="share under the weighted policy")
    adapter: str | None = Field(None, description=(
        "the model is a LoRA adapter of the pool (vLLM --enable-lora), at this path on the"
        " replicas: requests go only to replicas that have it loaded"))


class ModelConfig(Strict):
    deployments: list[DeploymentConfig] = Field(min_length=1)
    cache: ModelCacheSettings | None = Field(None, description="default: the top-level cache")
    routing: RoutingConfig | None = Field(None, description="default: the top-level routing")
    fallbacks: list[str] = Field([], description="models tried in order once these fail")
    context_window_fallback: str | None = Field(
        None, description="a larger-context model for requests too long for this one")
    hedging: HedgingConfig | None = Field(None, description="unset: no hedging")
