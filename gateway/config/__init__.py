"""Configuration: YAML file → validated pydantic models (never used on the hot path).

Secrets are written as `${ENV}` references and resolved at load time, so the file
itself never holds a key. `load_config` raises `ConfigError` carrying every problem
as `path.to.field: message`, which `turnout check-config` prints.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from gateway.batch.settings import BatchConfig
from gateway.config.accounts import AdmissionConfig, AuthConfig, MeteringConfig, TeamConfig
from gateway.config.base import Strict
from gateway.config.cache import CacheConfig
from gateway.config.routing import FailoverConfig, RoutingConfig
from gateway.config.server import RedisConfig, ServerConfig, UpstreamConfig
from gateway.config.telemetry import TelemetryConfig
from gateway.config.upstreams import ModelConfig, Pool, Provider
from gateway.console.settings import ConsoleConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ResponsesConfig(Strict):
    """Stored responses of the Responses API (`store`, `previous_response_id`)."""

    store_ttl_s: float = Field(30 * 86400, gt=0, description=(
        "how long a stored response can be fetched or continued (default 30 days)"))


class Config(Strict):
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
