"""Canonical request/response types shared by surfaces, adapters and policies.

This is a leaf module: it imports nothing of ours, so `adapters/` and `policies/`
can depend on it without depending on the rest of the gateway. The OpenAI chat
shape is the lingua franca: a canonical request carries the OpenAI-shaped body as
the client sent it (parsed once), and streamed chunks are OpenAI chunk objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

Operation = Literal["chat", "completions", "embeddings"]


@dataclass(slots=True)
class CanonicalRequest:
    operation: Operation
    model: str  # the public model name the client asked for
    body: dict[str, Any]  # OpenAI-shaped body, parsed once by the surface
    stream: bool = False
    include_usage: bool = False  # did the *client* ask for a usage chunk
    request_id: str = ""
    slo_ttft_ms: float | None = None  # from `x-turnout-slo-ttft-ms`
    priority: int | None = None  # from `x-turnout-priority` (may only lower the team's)
    allowed_models: frozenset[str] = frozenset()  # the key's models (empty: all): fallbacks
    prompt_tokens: int = 0  # estimated at admission: the scoreboard keeps TTFT by prompt size
    # The client's own request, for upstreams that serve the client's API natively.
    native: NativeRequest | None = None


@dataclass(frozen=True, slots=True)
class NativeRequest:
    """A request in the client's own API (`api`: "anthropic.messages", "openai.responses"),
    kept beside the canonical body it was translated into: an upstream whose capabilities
    list `api` is sent this one (model renamed), so nothing the translation drops is lost
    (cache_control, thinking, ...). It stands for that body only: once the body was
    replaced (a continuation's prefill), the canonical body is what goes upstream."""

    api: str
    body: dict[str, Any]
    of: dict[str, Any]  # the canonical body it stands for (compared by identity)

    def stands_for(self, req: CanonicalRequest) -> bool:
        return self.of is req.body


@dataclass(slots=True)
class Usage:
    """Tokens as the canonical (OpenAI) convention counts them: `prompt_tokens` is every
    input token, cached reads (`cached_tokens`) and cache writes (`cache_write_tokens`)
    included; `completion_tokens` includes `reasoning_tokens`. Adapters whose upstream
    counts otherwise (Anthropic reports cache reads and writes on top of `input_tokens`)
    convert once, into this."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # input read from the provider's prompt cache
    cache_write_tokens: int = 0  # input written to the provider's prompt cache
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _detail(details: Any, name: str) -> int:
    return int(details.get(name) or 0) if isinstance(details, dict) else 0


def usage_from_json(obj: Any) -> Usage | None:
    """An OpenAI `usage` object (the canonical shape's) as Usage; None if it is none."""
    if not isinstance(obj, dict):
        return None
    prompt = obj.get("prompt_tokens_details")
    return Usage(
        prompt_tokens=int(obj.get("prompt_tokens") or 0),
        completion_tokens=int(obj.get("completion_tokens") or 0),
        cached_tokens=_detail(prompt, "cached_tokens"),
        cache_write_tokens=_detail(prompt, "cache_write_tokens"),
        reasoning_tokens=_detail(obj.get("completion_tokens_details"), "reasoning_tokens"),
    )


def usage_json(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    """Usage as OpenAI reports it (cache writes, which OpenAI does not report, as
    `prompt_tokens_details.cache_write_tokens` when there are any)."""
    details: dict[str, int] = {"cached_tokens": usage.cached_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": details,
    }
    reasoning = reasoning_tokens or usage.reasoning_tokens
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


@dataclass(slots=True)
class Target:
    """Where one attempt goes: everything an adapter needs to address an upstream."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1 (no trailing slash)
    upstream_model: str
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Dialect-specific knobs (Azure api-version, auth header style, ...).
    options: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class UpstreamResponse:
    """A complete (non-streamed) upstream answer in the canonical OpenAI shape."""

    body: bytes  # serialized OpenAI-shaped JSON, ready for the client
    usage: Usage | None


@dataclass(slots=True)
class StreamChunk:
    """One OpenAI chat/completion chunk, already serialized (`data` is its JSON)."""

    data: bytes
    usage: Usage | None = None
    usage_only: bool = False  # the trailing `choices: []` usage chunk


class ErrorClass(enum.Enum):
    """How dispatch should treat a failed attempt."""

    RETRYABLE = "retryable"  # connect error, timeout, 429, 5xx: another try may work
    FINAL = "final"  # the request itself is wrong for this upstream (other 4xx)


class FailureKind(enum.Enum):
    CONNECT = "connect_error"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER = "upstream_server_error"
    REJECTED = "upstream_rejected"
    PROTOCOL = "upstream_protocol_error"
    CONTEXT_LENGTH = "context_length_exceeded"
    CONTENT_POLICY = "content_policy"


_RETRYABLE = {FailureKind.CONNECT, FailureKind.TIMEOUT, FailureKind.RATE_LIMITED,
              FailureKind.SERVER, FailureKind.PROTOCOL}


class UpstreamFailure(Exception):
    """A failed upstream attempt, classified. Messages never carry credentials."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.deployment: str | None = None  # which deployment failed (set by dispatch)

    @property
    def error_class(self) -> ErrorClass:
        return ErrorClass.RETRYABLE if self.kind in _RETRYABLE else ErrorClass.FINAL


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an upstream dialect can do, as its adapter declares it: the gateway asks these,
    never the dialect's name."""

    continues_prefill: bool = False  # continues a trailing assistant message (prefill)
    prefill_trims_whitespace: bool = False  # a prefill must not end in whitespace
    genai_provider: str = "openai"  # OpenTelemetry's gen_ai.provider.name for it
    # Client APIs it serves natively (NativeRequest.api): sent the client's own request.
    native_apis: frozenset[str] = frozenset()


HealthCheck = Literal["health", "chat", "models", "off"]


@dataclass(slots=True, eq=False)
class Deployment:
    """One routable place a public model can run: a provider, or one replica of a pool.

    Identity-compared (eq=False) so it can key per-process telemetry dicts cheaply.
    """

    id: str  # stable and unique, e.g. "openai" or "local-gpu/0"
    model: str  # the public model name it serves
    dialect: str  # which adapter speaks to it
    target: Target
    price_input: float = 0.0  # USD per 1M tokens
    price_output: float = 0.0
    pool: str | None = None  # set for self-hosted replicas
    weight: float = 1.0  # for the weighted policy
    price_cached_input: float | None = None  # None: cached input costs price_input
    price_cache_write: float | None = None  # None: cache writes cost price_input
    capabilities: Capabilities = Capabilities()
    can_continue: bool = False  # may take over a broken stream (config, else capabilities)
    health_check: HealthCheck = "off"  # how to check it while its circuit is open
    # A LoRA adapter served by a pool (`target.upstream_model` is its name): its path as
    # the replicas load it. Only replicas that have it loaded may serve it.
    adapter_path: str | None = None
