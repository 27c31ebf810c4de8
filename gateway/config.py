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

Dialect = Literal["openai"]
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
    # Simulated stand-in used when api_key resolves empty, so the demo runs keyless.
    simulate_without_key: SimProfileName | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)


class Pool(_Strict):
    name: str
    endpoints: list[str] = []
    simulate: Simulate | None = None

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [_http_url(u) for u in v]

    @model_validator(mode="after")
    def _has_members(self) -> Pool:
        if not self.endpoints and self.simulate is None:
            raise ValueError("a pool needs `endpoints` or `simulate`")
        return self


class Price(_Strict):
    """USD per 1M tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)
    cached_input: float | None = Field(None, ge=0)


class DeploymentConfig(_Strict):
    target: str = Field(description="name of a provider or pool")
    model: str = Field(description="the model name the upstream knows")
    price: Price = Price()  # type: ignore[call-arg]


class ModelConfig(_Strict):
    deployments: list[DeploymentConfig] = Field(min_length=1)


class Config(_Strict):
    server: ServerConfig = ServerConfig()  # type: ignore[call-arg]
    redis: RedisConfig | None = None
    providers: list[Provider] = []
    pools: list[Pool] = []
    models: dict[str, ModelConfig] = Field(min_length=1)

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


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        # Cross-field validators already put the precise path in their message.
        if msg.startswith("models.") and ": " in msg:
            problems.append(msg)
        else:
            problems.append(f"{loc or '(root)'}: {msg}")
    return problems


def parse_config(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(["(root): the config must be a mapping"])
    try:
        return Config.model_validate(_resolve_env(raw))
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


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
