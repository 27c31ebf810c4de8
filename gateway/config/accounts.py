"""Who may ask and how much: `teams` (keys, limits, budgets), `auth`, `admission` and
`metering`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.config.base import Strict
from gateway.config.cache import CacheSettings

# policies.keys.NAME: safe inside Redis key names and URL paths (not "..", not "-x")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Budgets are counted in integer nano-dollars, exact in Redis's Lua numbers (doubles) up
# to 2**53: about $9M per period.
MAX_BUDGET_USD = 9_000_000


class LimitsConfig(Strict):
    rpm: int = Field(0, ge=0, description="requests per minute; 0: unlimited")
    tpm: int = Field(0, ge=0, description="tokens per minute (prompt + completion)")


class BudgetConfig(Strict):
    usd: float = Field(ge=0, le=MAX_BUDGET_USD)
    period: Literal["daily", "monthly"] = "monthly"  # UTC calendar


class KeyConfig(Strict):
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


class TeamConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    priority: int = 0
    models: list[str] = Field([], description="allowed public models; empty: all")
    limits: LimitsConfig = LimitsConfig()  # type: ignore[call-arg]
    key_limits: LimitsConfig = LimitsConfig()  # type: ignore[call-arg]
    budget: BudgetConfig | None = None
    slo_ttft_ms: float | None = Field(None, gt=0, description="TTFT target for routing")
    cache: CacheSettings | None = Field(None, description="default: the top-level cache")
    keys: list[KeyConfig] = []


class LockoutConfig(Strict):
    failures: int = Field(20, ge=0, description="failed authentications per client address"
                          " before it is locked out (0: never)")
    window_s: float = Field(60.0, gt=0)


MIN_ADMIN_KEY = 32


class AuthConfig(Strict):
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


class AdmissionConfig(Strict):
    on_store_outage: Literal["fail-closed", "fail-open"] = "fail-closed"
    # fail-open: per-process limits while the store is down; unset: each key's own limits.
    fallback: LimitsConfig | None = None
    default_max_tokens: int = Field(4096, ge=1, description="reserved when a request sets none")
    reservation_ttl_s: float | None = Field(None, gt=0, description="default: total_s + 60")
    # With Redis: admit from shares of the limits and budgets taken ahead of need
    # (gateway/accounting/lease_holder.py), so most requests need no round trip; off: one
    # per request.
    leases: bool = True


class MeteringConfig(Strict):
    stream_maxlen: int = Field(1_000_000, ge=1000, description="usage events kept per team")
