"""The `Store` interface. Anything that must hold across workers and replicas goes here.

Both implementations give the same semantics; every multi-key update is atomic
(a Lua script in Redis, a plain critical section in memory), so callers never
compose read-modify-write sequences themselves.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.store.batch_base import BatchQueue
from policies.budgets import Budget
from policies.ratelimits import Limits, LimitState


class StoreUnavailable(Exception):
    """The backing store cannot be reached; callers apply their outage policy."""


# The admission script's limiters, in its KEYS/ARGV order: (name, key scope, kind).
LIMITERS = (("key_rpm", True, "rpm"), ("key_tpm", True, "tpm"),
            ("team_rpm", False, "rpm"), ("team_tpm", False, "tpm"))
ROLLUP_METRICS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens",
                  "cost_nanos", "cache_hits", "errors", "estimated",
                  "saved_tokens", "saved_cost_nanos",  # what response-cache hits saved
                  # parts of prompt_tokens / completion_tokens (canonical.Usage)
                  "cache_write_tokens", "reasoning_tokens")


# How long a settled request's id is remembered, so a settlement sent again (its reply
# was lost: a stall, a dropped connection) is recognised and not applied twice. Resends
# follow within seconds of the store answering again; this is ample margin.
SETTLED_RETENTION_MS = 15 * 60 * 1000


@dataclass(slots=True)
class AdmitArgs:
    team: str
    key_id: str
    reservation: str  # the request's own budget reservation id (unique: its admission id)
    check_key: bool  # refuse when the key's record is gone (revoked)
    key_limits: Limits
    team_limits: Limits
    tokens: int  # reserved on the TPM limiters
    team_budget: Budget | None
    key_budget: Budget | None
    cost_nanos: int  # reserved on the budgets
    ttl_ms: int  # the reservation expires after this (its request's process died)

    def limits(self) -> tuple[int, int, int, int]:
        return (self.key_limits.rpm, self.key_limits.tpm,
                self.team_limits.rpm, self.team_limits.tpm)


@dataclass(slots=True)
class AdmitResult:
    refused: str = ""  # "" | "revoked" | a LIMITERS name | "team_budget" | "key_budget"
    retry_ms: float = 0.0  # refused by a limiter: until it would fit (-1: never)
    requests: LimitState | None = None  # the tighter RPM limiter, for the headers
    tokens: LimitState | None = None


@dataclass(slots=True)
class SettleArgs:
    team: str
    key_id: str
    settlement: str  # unique per admitted request: a second settlement of it is ignored
    reservation: str  # the reservation it was admitted under: its own, or a lease's
    reserved_nanos: int  # its part of that reservation, given back (ALL: whatever it holds)
    token_delta: int  # real tokens minus those reserved on the TPM limiters
    key_tpm: int  # the limits the reservation was made under (0: none, or not reserved)
    team_tpm: int
    cost_nanos: int
    team_period: str
    key_period: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_hit: bool
    error: bool
    estimated: bool
    event: bytes  # the JSON usage event
    saved_tokens: int = 0  # a response-cache hit: the tokens and cost it did not spend
    saved_cost_nanos: int = 0
    cache_write_tokens: int = 0  # of prompt_tokens: written to the provider's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens

    def rollup(self) -> tuple[int, ...]:
        """Increments in ROLLUP_METRICS order."""
        return (1, self.prompt_tokens, self.completion_tokens, self.cached_tokens,
                self.cost_nanos, int(self.cache_hit), int(self.error), int(self.estimated),
                self.saved_tokens, self.saved_cost_nanos, self.cache_write_tokens,
                self.reasoning_tokens)


ALL = -1  # SettleArgs.reserved_nanos: the whole reservation (the request's own)


@dataclass(slots=True)
class Release:
    """Give back a request's own reservation whole: one whose admission may have happened
    in the store although the request never got the answer (it then was refused, or
    admitted by the outage policy). A no-op when there is none."""

    team: str
    reservation: str


@dataclass(frozen=True, slots=True)
class CacheWrite:
    """The end of a response-cache miss: store `value` (None: nothing to store) under
    `key` for `ttl_s`, and release `lock` if `token` still holds it (b"": none held)."""

    key: str
    lock: str
    token: bytes
    value: bytes | None
    ttl_s: float


@dataclass(slots=True)
class LeaseArgs:
    """A lease's renewal (policies/leases.py): give back `returning`, the units it still
    holds, and take a new share, each of requests, tokens and nanos `wanted` and at least
    `least` (wanted all 0: give back only), under the key's and team's limits and budgets."""

    team: str
    key_id: str
    lease_id: str
    limits: tuple[int, int, int, int]  # in LIMITERS order
    returning: tuple[int, int, int]
    wanted: tuple[int, int, int]
    least: tuple[int, int, int]
    team_budget: Budget | None
    key_budget: Budget | None
    ttl_ms: int  # its budget reservation expires this long after the last grant
    share: int  # each limiter and budget gives at most 1/share of what it has left


@dataclass(slots=True)
class LeaseGrant:
    refused: str = ""  # "" | "returned" (gave back only) | "revoked" | "none": nothing to spare
    granted: tuple[float, float, float] = (0, 0, 0)  # requests, tokens, nanos (inf: no bound)
    requests: LimitState | None = None  # the tighter RPM limiter after the grant
    tokens: LimitState | None = None


class Store(BatchQueue, Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def hgetall(self, key: str) -> dict[str, bytes]: ...

    async def hget(self, key: str, field: str) -> bytes | None: ...

    async def hset(self, key: str, field: str, value: bytes) -> None: ...

    async def hdel(self, key: str, field: str) -> bool:
        """True when the field existed."""
        ...

    async def sadd(self, key: str, member: str) -> None: ...

    async def smembers(self, key: str) -> builtins.set[str]: ...

    async def xrange(self, key: str, after: str | None, count: int) -> list[tuple[str, bytes]]:
        """Up to `count` stream entries (id, field `e`) with ids after `after` (None: all)."""
        ...

    async def admit(self, args: AdmitArgs) -> AdmitResult:
        """Check and reserve everything a request needs, all or nothing, one round trip."""
        ...

    async def settle(self, args: SettleArgs) -> None:
        """Settle an admitted request and record its usage event, atomically, once: a
        settlement already applied (same `settlement` id) is ignored."""
        ...

    async def settle_many(self, batch: Sequence[SettleArgs | Release]) -> None:
        """Each in order, in one round trip, each atomic. On StoreUnavailable some may
        have applied: callers send the batch again, which applies each exactly once."""
        ...

    # The response cache (gateway/cache): an entry and the lock that coalesces its misses.
    # The two keys must share a Redis Cluster slot (layout.cache_entry / cache_lock do).

    async def cache_lookup(self, key: str, lock: str, token: bytes,
                           lock_ttl_s: float) -> tuple[bytes | None, bool]:
        """(the entry, None when absent; whether this call took `lock` for `token`), one
        round trip. The lock is tried only on a miss and when `lock_ttl_s` > 0."""
        ...

    async def cache_finish(self, writes: Sequence[CacheWrite]) -> None:
        """Each write, in one round trip (the misses that ended in one loop turn)."""
        ...

    async def cache_renew(self, locks: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        """Extend each (lock, token) still held to `ttl_s` from now, in one round trip."""
        ...

    async def limiter_tats(self, team: str) -> tuple[float, dict[str, float]]:
        """(the store's clock, ms; each GCRA limiter of the team: its `layout.limiter`
        field → its theoretical arrival time, ms): how much of each limit is in use, for
        the console. Not on the request path."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
