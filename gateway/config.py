"""Configuration: YAML file → validated pydantic models (never used on the hot path).

Secrets are written as `${ENV}` references and resolved at load time, so the file
itself never holds a key. `load_config` raises `ConfigError` carrying every problem
as `path.to.field: message`, which `turnout check-config` prints.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.batch.settings import BatchConfig
from gateway.console.settings import ConsoleConfig
from gateway.wire.limits import ClientLimits, ServerLimits
from gateway.wire.proxy import DIRECT, parse_proxy
from gateway.wire.redis_url import parse_target

Dialect = Literal["openai", "anthropic", "gemini"]
SimProfileName = Literal["instant", "fast-gpu", "slow-gpu", "cloud"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect_s: float = Field(5.0, gt=0)
    first_token_s: float = Field(60.0, gt=0, description="upstream response headers / first chunk")
    idle_s: float = Field(60.0, gt=0, description="longest gap between two streamed chunks")
    total_s: float = Field(600.0, gt=0)


_SERVER_LIMITS, _CLIENT_LIMITS = ServerLimits(), ClientLimits()  # the defaults, written once


class ServerLimitsConfig(_Strict):
    """What a client may hold (gateway/wire/server.py; `http: httptools` has only
    uvicorn's `limit_concurrency`, set to max_connections)."""

    max_connections: int = Field(_SERVER_LIMITS.max_connections, ge=1, description=(
        "per process; more are answered 503 and closed (also kept under the open-file"
        " limit)"))
    max_head_bytes: int = Field(_SERVER_LIMITS.max_head_bytes, ge=1024,
                                description="request line and headers; more: 431")
    header_timeout_s: float = Field(_SERVER_LIMITS.header_timeout_s, gt=0, description=(
        "from a request's first byte to the end of its head; later: 408"))
    request_timeout_s: float = Field(_SERVER_LIMITS.request_timeout_s, gt=0, description=(
        "from a request's first byte to the end of its body; later: 408"))


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    timeouts: Timeouts = Timeouts()  # type: ignore[call-arg]
    # The HTTP/1.1 protocol uvicorn runs: ours (gateway/wire/server.py, lighter), or
    # uvicorn's own httptools one, kept as the fallback it replaces.
    http: Literal["turnout", "httptools"] = "turnout"
    # After SIGTERM: how long requests and streams in flight may run on (new connections
    # are refused, /readyz says 503); what still runs then ends with an error event.
    drain_timeout_s: int = Field(30, ge=1, le=3600)
    # How long an idle keep-alive connection is kept: longer than clients' pools keep
    # theirs (httpx 5 s, aiohttp 15 s, Node 5 s), so the client, not the server, ends it
    # and never sends a request into a connection the server is closing (nginx: 75 s).
    # A new connection's first request must start within limits.header_timeout_s.
    keep_alive_s: int = Field(75, ge=1, le=3600)
    limits: ServerLimitsConfig = ServerLimitsConfig()  # type: ignore[call-arg]
    # A second listener for /metrics, /debug/failover, /readyz and /healthz; once set,
    # the first two are no longer served on `port`.
    ops_port: int | None = Field(None, ge=0, le=65535)
    ops_host: str | None = Field(None, description="default: host")
    # x-turnout-deployment: the deployment's id (a pool replica's names its address),
    # only its provider or pool name, or no header.
    deployment_header: Literal["id", "name", "off"] = "id"

    @model_validator(mode="after")
    def _ops_port(self) -> ServerConfig:
        if self.ops_port is not None and self.ops_port == self.port and self.port:
            raise ValueError("ops_port: must differ from port")
        return self


class UpstreamConfig(_Strict):
    """What the upstream HTTP client accepts (gateway/wire/http_client.py); over a cap the
    attempt fails as upstream_protocol_error (502) and its connection is dropped."""

    trust_env: bool = Field(True, description="HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY")
    max_headers: int = Field(_CLIENT_LIMITS.max_headers, ge=1)
    max_header_bytes: int = Field(_CLIENT_LIMITS.max_header_bytes, ge=256,
                                  description="one header, name and value")
    max_body_bytes: int = Field(_CLIENT_LIMITS.max_body_bytes, ge=1024,
                                description="a non-streamed answer, decoded")
    max_error_body_bytes: int = Field(_CLIENT_LIMITS.max_error_body_bytes, ge=1024,
                                      description="an error answer (3xx to 5xx)")
    max_sse_event_bytes: int = Field(_CLIENT_LIMITS.max_sse_event_bytes, ge=1024,
                                     description="one streamed event, its lines together")
    max_decompression_ratio: float = Field(_CLIENT_LIMITS.max_decompression_ratio, ge=1,
                                           description="decoded/encoded, past the first MiB")

    def limits(self) -> ClientLimits:
        return ClientLimits(**self.model_dump(exclude={"trust_env"}))


class RedisConfig(_Strict):
    url: str

    @field_validator("url")
    @classmethod
    def _parsed(cls, v: str) -> str:
        parse_target(v)  # what the store will connect with; its errors never quote the URL
        return v


class Simulate(_Strict):
    """Run an in-process simulator instead of a real upstream (demo and tests)."""

    profile: SimProfileName = "fast-gpu"
    replicas: int = Field(1, ge=1, le=16)
    # With the pool's `kv_events`: each simulated replica's KV cache, in blocks of
    # `block_size` tokens, whose events it publishes as vLLM does.
    kv_blocks: int = Field(4096, ge=1)
    block_size: int = Field(16, ge=1)


class LoraSettings(_Strict):
    """A pool's LoRA adapters (deployments with `adapter`)."""

    # Load an adapter no replica has on the least-loaded one (POST /v1/load_lora_adapter;
    # the replicas need VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
    dynamic_loading: bool = False
    refresh_s: float = Field(5.0, gt=0, description="how often /v1/models is read")


class KvEventsReplica(_Strict):
    port: int = Field(ge=1, le=65535)
    replay_port: int = Field(ge=1, le=65535)


class KvEvents(_Strict):
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
        return {_http_url(root): ports for root, ports in v.items()}


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


class Provider(_Strict):
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
        return _http_url(v)


class Price(_Strict):
    """USD per 1M tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)
    cached_input: float | None = Field(None, ge=0, description=(
        "input read from the provider's prompt cache; default: the input price"))
    cache_write: float | None = Field(None, ge=0, description=(
        "input written to the provider's prompt cache (Anthropic: 1.25x input for 5-minute"
        " entries); default: the input price"))


class Pool(_Strict):
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
        return [u if u.startswith("dns://") else _http_url(u) for u in v]

    @model_validator(mode="after")
    def _has_members(self) -> Pool:
        if not self.endpoints and self.simulate is None:
            raise ValueError("a pool needs `endpoints` or `simulate`")
        if self.kv_events is not None and self.simulate is None and not self.kv_events.tokenizer:
            raise ValueError("kv_events: needs `tokenizer` (the model's tokenizer directory)")
        return self


class DeploymentConfig(_Strict):
    target: str = Field(description="name of a provider or pool")
    model: str = Field(description="the model name the upstream knows")
    price: Price | None = Field(None, description="default: the pool's price, else free")
    weight: float = Field(1.0, gt=0, description="share under the weighted policy")
    adapter: str | None = Field(None, description=(
        "the model is a LoRA adapter of the pool (vLLM --enable-lora), at this path on the"
        " replicas: requests go only to replicas that have it loaded"))


PolicyName = Literal["slo-cost", "kv-aware", "latency", "least-loaded", "prefix-affinity",
                     "weighted", "round-robin"]


class RoutingConfig(_Strict):
    policy: PolicyName = "slo-cost"
    within_pool: Literal["least-loaded", "prefix-affinity", "kv-aware"] = "least-loaded"
    slo_ttft_ms: float | None = Field(None, gt=0, description="default TTFT SLO")
    # Load shedding: when no deployment is predicted to meet the SLO and the best one's
    # predicted TTFT exceeds this, requests below `shed_below_priority` get 429.
    shed_wait_ms: float | None = Field(None, gt=0)
    shed_below_priority: int = 1


class HedgingConfig(_Strict):
    """TTFT hedging: a second deployment is asked when the first token is late."""

    quantile: float = Field(0.95, gt=0, lt=1, description="of the candidates' live TTFT")
    min_delay_ms: float = Field(50.0, ge=0)
    max_delay_ms: float = Field(2000.0, gt=0, description="also the delay before any data")


class CacheSettings(_Strict):
    """The response cache for one team (`teams[].cache`) or model (`models.<m>.cache`).
    Unset fields inherit the top-level `cache`; where a model and a team both set one,
    the stricter wins (off, deterministic only, no coalescing, the shorter TTL and cap)."""

    enabled: bool | None = None
    ttl_s: float | None = Field(None, gt=0)
    max_entry_bytes: int | None = Field(None, gt=0)
    deterministic_only: bool | None = None
    coalesce: bool | None = None


class ModelCacheSettings(CacheSettings):
    shared: bool = Field(False, description="one cache for every team: answers that do not"
                         " depend on who asks (default: each team has its own)")


class ModelConfig(_Strict):
    deployments: list[DeploymentConfig] = Field(min_length=1)
    cache: ModelCacheSettings | None = Field(None, description="default: the top-level cache")
    routing: RoutingConfig | None = Field(None, description="default: the top-level routing")
    fallbacks: list[str] = Field([], description="models tried in order once these fail")
    context_window_fallback: str | None = Field(
        None, description="a larger-context model for requests too long for this one")
    hedging: HedgingConfig | None = Field(None, description="unset: no hedging")


class RetryBudgetConfig(_Strict):
    ratio: float = Field(0.2, ge=0, le=10, description="retries per request over the window")
    min_per_s: float = Field(10.0, ge=0, description="retries always allowed, per second")
    window_s: float = Field(10.0, gt=0)


class BackoffConfig(_Strict):
    base_ms: float = Field(100.0, ge=0)
    max_ms: float = Field(2000.0, ge=0)
    max_retry_after_s: float = Field(10.0, ge=0, description="longer Retry-After: not waited")


class BreakerConfig(_Strict):
    consecutive_failures: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    min_requests: int = Field(10, ge=1, description="in the window, before the rate counts")
    window_s: float = Field(10.0, gt=0)
    cooldown_s: float = Field(5.0, gt=0, description="open, before a half-open probe")
    health_check_interval_s: float = Field(1.0, gt=0, description="while a circuit is open")
    health_check_timeout_s: float = Field(2.0, gt=0)


class FailoverConfig(_Strict):
    enabled: bool = Field(True, description="false: one attempt on the first candidate")
    max_attempts: int = Field(3, ge=1, description="upstream attempts per request, in all")
    # Passes over the candidates (and fallbacks); each pass after the first waits a backoff
    # (at least the upstream's Retry-After). 1: every deployment at most once per request.
    rounds: int = Field(1, ge=1)
    continuation: bool = Field(True, description="continue broken streams elsewhere")
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()  # type: ignore[call-arg]
    backoff: BackoffConfig = BackoffConfig()  # type: ignore[call-arg]
    breaker: BreakerConfig = BreakerConfig()  # type: ignore[call-arg]


# policies.keys.NAME: safe inside Redis key names and URL paths (not "..", not "-x")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Budgets are counted in integer nano-dollars, exact in Redis's Lua numbers (doubles) up
# to 2**53: about $9M per period.
MAX_BUDGET_USD = 9_000_000


class LimitsConfig(_Strict):
    rpm: int = Field(0, ge=0, description="requests per minute; 0: unlimited")
    tpm: int = Field(0, ge=0, description="tokens per minute (prompt + completion)")


class BudgetConfig(_Strict):
    usd: float = Field(ge=0, le=MAX_BUDGET_USD)
    period: Literal["daily", "monthly"] = "monthly"  # UTC calendar


class KeyConfig(_Strict):
    id: str = Field(pattern=NAME_PATTERN)
    key: str = Field(description="the secret, from the environment: ${VAR}")
    name: str = ""
    limits: LimitsConfig | None = None  # default: the team's key_limits
    budget: BudgetConfig | None = None
    # `turnout serve` prints the key when it starts: for the demo key only, never production.
    show_at_startup: bool = False

    @field_validator("key")
    @classmethod
    def _long_enough(cls, v: str) -> str:
        if len(v) < 16:
            raise ValueError("must be at least 16 characters (is its ${VAR} set?)")
        return v


class TeamConfig(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    priority: int = 0
    models: list[str] = Field([], description="allowed public models; empty: all")
    limits: LimitsConfig = LimitsConfig()  # type: ignore[call-arg]
    key_limits: LimitsConfig = LimitsConfig()  # type: ignore[call-arg]
    budget: BudgetConfig | None = None
    slo_ttft_ms: float | None = Field(None, gt=0, description="TTFT target for routing")
    cache: CacheSettings | None = Field(None, description="default: the top-level cache")
    keys: list[KeyConfig] = []


class LockoutConfig(_Strict):
    failures: int = Field(20, ge=0, description="failed authentications per client address"
                          " before it is locked out (0: never)")
    window_s: float = Field(60.0, gt=0)


MIN_ADMIN_KEY = 32


class AuthConfig(_Strict):
    admin_key: str | None = Field(None, description="bearer key for /admin; unset: no admin API")
    cache_ttl_s: float = Field(5.0, ge=0, description="how long a process reuses a key lookup")
    lockout: LockoutConfig = LockoutConfig()  # type: ignore[call-arg]

    @field_validator("admin_key")
    @classmethod
    def _strong(cls, v: str | None) -> str | None:
        if v and (len(v) < MIN_ADMIN_KEY or len(set(v)) < 8):
            raise ValueError(f"must be at least {MIN_ADMIN_KEY} characters, not a repetition"
                             " (e.g. `openssl rand -hex 24`)")
        return v or None  # an unset ${VAR} turns the admin API off


class AdmissionConfig(_Strict):
    on_store_outage: Literal["fail-closed", "fail-open"] = "fail-closed"
    # fail-open: per-process limits while the store is down; unset: each key's own limits.
    fallback: LimitsConfig | None = None
    default_max_tokens: int = Field(4096, ge=1, description="reserved when a request sets none")
    reservation_ttl_s: float | None = Field(None, gt=0, description="default: total_s + 60")
    # With Redis: admit from shares of the limits and budgets taken ahead of need
    # (gateway/accounting/lease_holder.py), so most requests need no round trip; off: one
    # per request.
    leases: bool = True


class ResponsesConfig(_Strict):
    """Stored responses of the Responses API (`store`, `previous_response_id`)."""

    store_ttl_s: float = Field(30 * 86400, gt=0, description=(
        "how long a stored response can be fetched or continued (default 30 days)"))


class MeteringConfig(_Strict):
    stream_maxlen: int = Field(1_000_000, ge=1000, description="usage events kept per team")


class TracingConfig(_Strict):
    """OpenTelemetry traces over OTLP. Unset fields fall back to the standard `OTEL_*`
    environment variables, then to the SDK's defaults; `OTEL_SDK_DISABLED=true` wins."""

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] | None = Field(
        None, description="default: OTEL_TRACES_EXPORTER, else otlp")
    protocol: Literal["http/protobuf", "grpc"] | None = Field(
        None, description="default: OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL, else http/protobuf")
    endpoint: str | None = Field(
        None, description="collector base URL; default: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT")
    headers: dict[str, str] = Field({}, description="e.g. a backend's auth, as ${ENV}")
    service_name: str | None = Field(None, description="default: OTEL_SERVICE_NAME, else turnout")
    sample_ratio: float | None = Field(
        None, ge=0, le=1, description="default: OTEL_TRACES_SAMPLER, else always (parent-based)")
    # Prompts and completions go on spans only for these teams (never by default).
    capture_content: list[str] = []


class TelemetryConfig(_Strict):
    metrics: bool = Field(True, description="GET /metrics (Prometheus)")
    access_log: bool = Field(True, description="one JSON line per request on turnout.access")
    tracing: TracingConfig = TracingConfig()  # type: ignore[call-arg]


class CacheConfig(_Strict):
    """The response cache (gateway/cache): exact-match, in the store, per team."""

    enabled: bool = Field(False, description="for every model and team that does not say")
    ttl_s: float = Field(3600.0, gt=0)
    max_ttl_s: float = Field(86400.0, gt=0, description="the most x-turnout-cache-ttl may ask")
    max_entry_bytes: int = Field(1 << 20, gt=0, description="larger answers are not stored")
    deterministic_only: bool = Field(True, description="only temperature 0 or a seed")
    coalesce: bool = Field(True, description="concurrent identical misses: one upstream call")
    lock_ttl_s: float = Field(10.0, gt=0, description="a coalescing leader's lock, renewed"
                              " while it works: how soon a waiter takes over from a dead one")
    wait_s: float | None = Field(None, gt=0, description="the longest a request waits for"
                                 " another's answer; default: server.timeouts.total_s")


class Config(_Strict):
    server: ServerConfig = ServerConfig()  # type: ignore[call-arg]
    redis: RedisConfig | None = None
    providers: list[Provider] = []
    pools: list[Pool] = []
    models: dict[str, ModelConfig] = Field(min_length=1)
    routing: RoutingConfig = RoutingConfig()  # type: ignore[call-arg]
    auth: AuthConfig = AuthConfig()  # type: ignore[call-arg]
    teams: list[TeamConfig] = []
    admission: AdmissionConfig = AdmissionConfig()  # type: ignore[call-arg]
    metering: MeteringConfig = MeteringConfig()  # type: ignore[call-arg]
    responses: ResponsesConfig = ResponsesConfig()  # type: ignore[call-arg]
    cache: CacheConfig = CacheConfig()  # type: ignore[call-arg]
    failover: FailoverConfig = FailoverConfig()  # type: ignore[call-arg]
    telemetry: TelemetryConfig = TelemetryConfig()  # type: ignore[call-arg]
    upstream: UpstreamConfig = UpstreamConfig()  # type: ignore[call-arg]
    batch: BatchConfig = BatchConfig()  # type: ignore[call-arg]  # gateway/batch
    console: ConsoleConfig = ConsoleConfig()  # type: ignore[call-arg]  # gateway/console

    @property
    def auth_required(self) -> bool:
        """Keys are required once any team or an admin key exists; else anonymous access."""
        return bool(self.teams or self.auth.admin_key)

    @model_validator(mode="after")
    def _teams(self) -> Config:
        problems: list[str] = []
        names = [t.name for t in self.teams]
        problems += [f"teams: team {n!r} is declared twice" for n in sorted(set(names))
                     if names.count(n) > 1]
        secrets = [k.key for t in self.teams for k in t.keys]
        if len(set(secrets)) != len(secrets) or self.auth.admin_key in secrets:
            problems.append("teams: two keys (or a key and auth.admin_key) are the same")
        for i, team in enumerate(self.teams):
            ids = [k.id for k in team.keys]
            problems += [f"teams.{i}.keys: key id {k!r} is used twice" for k in sorted(set(ids))
                         if ids.count(k) > 1]
            problems += [f"teams.{i}.models: unknown model {m!r}" for m in team.models
                         if m not in self.models]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _console(self) -> Config:
        problems = self.console.problems(self.auth.admin_key,
                                         [k.key for t in self.teams for k in t.keys])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _references(self) -> Config:
        names = [p.name for p in self.providers] + [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"provider/pool names must be unique, repeated: {', '.join(dupes)}")
        known = set(names)
        for model, mc in self.models.items():
            for i, dep in enumerate(mc.deployments):
                if dep.target not in known:
                    raise ValueError(
                        f"models.{model}.deployments.{i}.target: unknown target {dep.target!r}"
                        f" (known: {', '.join(sorted(known)) or 'none'})"
                    )
                if dep.adapter is not None and dep.target not in {p.name for p in self.pools}:
                    raise ValueError(f"models.{model}.deployments.{i}.adapter: a LoRA adapter"
                                     " is served by a pool, not a provider")
        return self

    @model_validator(mode="after")
    def _fallbacks(self) -> Config:
        problems = []
        for model, mc in self.models.items():
            named = [(f"fallbacks.{i}", m) for i, m in enumerate(mc.fallbacks)]
            if mc.context_window_fallback is not None:
                named.append(("context_window_fallback", mc.context_window_fallback))
            problems += [f"models.{model}.{where}: unknown model {m!r}" if m not in self.models
                         else f"models.{model}.{where}: a model cannot fall back to itself"
                         for where, m in named if m not in self.models or m == model]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return v.rstrip("/")


def _resolve_env(node: Any) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; unset vars become ''."""
    if isinstance(node, dict):
        return {k: _resolve_env(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_env(v) for v in node]
    if isinstance(node, str):
        return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), node)
    return node


def format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        # Cross-field validators already put the precise path in their message.
        if msg.startswith(("models.", "teams")) and ": " in msg:
            problems.extend(msg.split("; "))
        else:
            problems.append(f"{loc or '(root)'}: {msg}")
    return problems


def parse_config(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(["(root): the config must be a mapping"])
    try:
        return Config.model_validate(_resolve_env(raw))
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError([f"(file): cannot read {path}: {err.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"(file): invalid YAML: {err}"]) from None
    return parse_config(raw)
