"""The response cache's settings: the top-level `cache`, and a team's or model's own."""

from __future__ import annotations

from pydantic import Field

from gateway.config.base import Strict


class CacheSettings(Strict):
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


class CacheConfig(Strict):
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
