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


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    timeouts: Timeouts = Timeouts()  # type: ignore[call-arg]


class RedisConfig(_Strict):
    url: str

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v


class Simulate(_Strict):
    """Run an in-process simulator instead of a real upstream (demo and tests)."""

    profile: SimProfileName = "fast-gpu"
    replicas: int = Field(1, ge=1, le=16)


class Provider(_Strict):
    name: str
    dialect: Dialect = "openai"
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    # Dialect knobs: Azure `api_version` + `auth: api-key`; Anthropic `anthropic_version`,
    # `max_tokens_default`.
    options: dict[str, str] = {}
    # Simulated stand-in used when api_key resolves empty, so the demo runs keyless.
    simulate_without_key: SimProfileName | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)


class Price(_Strict):
    """USD per 1M tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)
    cached_input: float | None = Field(None, ge=0, description="default: the input price")


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

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [u if u.startswith("dns://") else _http_url(u) for u in v]

    @model_validator(mode="after")
    def _has_members(self) -> Pool:
        if not self.endpoints and self.simulate is None:
            raise ValueError("a pool needs `endpoints` or `simulate`")
        return self


class DeploymentConfig(_Strict):
    target: str = Field(description="name of a provider or pool")
    model: str = Field(description="the model name the upstream knows")
    price: Price | None = Field(None, description="default: the pool's price, else free")
    weight: float = Field(1.0, gt=0, description="share under the weighted policy")


PolicyName = Literal["slo-cost", "latency", "least-loaded", "prefix-affinity", "weighted",
                     "round-robin"]


class RoutingConfig(_Strict):
    policy: PolicyName = "slo-cost"
    within_pool: Literal["least-loaded", "prefix-affinity"] = "least-loaded"
    slo_ttft_ms: float | None = Field(None, gt=0, description="default TTFT SLO")
    # Load shedding: when no deployment is predicted to meet the SLO and the best one's
    # predicted TTFT exceeds this, requests below `shed_below_priority` get 429.
    shed_wait_ms: float | None = Field(None, gt=0)
    shed_below_priority: int = 1


class ModelConfig(_Strict):
    deployments: list[DeploymentConfig] = Field(min_length=1)
    routing: RoutingConfig | None = Field(None, description="default: the top-level routing")


NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # policies.keys.NAME: safe inside Redis key names


class LimitsConfig(_Strict):
    rpm: int = Field(0, ge=0, description="requests per minute; 0: unlimited")
    tpm: int = Field(0, ge=0, description="tokens per minute (prompt + completion)")


class BudgetConfig(_Strict):
    usd: float = Field(ge=0)
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
    keys: list[KeyConfig] = []


class AuthConfig(_Strict):
    admin_key: str | None = Field(None, description="bearer key for /admin; unset: no admin API")
    cache_ttl_s: float = Field(5.0, ge=0, description="how long a process reuses a key lookup")

    @field_validator("admin_key")
    @classmethod
    def _strong(cls, v: str | None) -> str | None:
        if v and len(v) < 16:
            raise ValueError("must be at least 16 characters")
        return v or None  # an unset ${VAR} turns the admin API off


class AdmissionConfig(_Strict):
    on_store_outage: Literal["fail-closed", "fail-open"] = "fail-closed"
    # fail-open: per-process limits while the store is down; unset: each key's own limits.
    fallback: LimitsConfig | None = None
    default_max_tokens: int = Field(4096, ge=1, description="reserved when a request sets none")
    reservation_ttl_s: float | None = Field(None, gt=0, description="default: total_s + 60")


class MeteringConfig(_Strict):
    stream_maxlen: int = Field(1_000_000, ge=1000, description="usage events kept per team")


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
