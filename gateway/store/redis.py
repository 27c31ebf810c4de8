"""The Redis store: shared by every worker and replica. It speaks to Redis through a
`RedisConnection` (gateway/wire/base.py): ours over RESP2 (gateway/wire/resp.py) unless the
services pass another (measured, or a test's fake)."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.store import layout
from gateway.store.base import (
    LIMITERS,
    SETTLED_RETENTION_MS,
    AdmitArgs,
    AdmitResult,
    CacheWrite,
    LeaseArgs,
    LeaseGrant,
    Release,
    SettleArgs,
    StoreUnavailable,
)
from gateway.store.redis_batch import RedisBatchQueue
from gateway.wire.base import Keys, RedisConnection, Script, ScriptCall, StableKeys, Subscription
from gateway.wire.resp import RespError
from policies.budgets import Budget
from policies.ratelimits import LimitState

_LUA = Path(__file__).with_name("lua")
_KEYS_CACHED = 10_000  # (team, settlement or not) whose script keys are kept encoded


def _script(name: str, common: bool = True) -> Script:
    source = ((_LUA / "common.lua").read_text() if common else "") + (
        _LUA / f"{name}.lua").read_text()
    return Script(name, source.encode())


def _ms(ttl_s: float | None) -> int | None:
    return None if ttl_s is None else max(1, int(ttl_s * 1000))


def _budget_args(budget: Budget | None, period: str = "monthly") -> tuple[int, str]:
    return (-1, period) if budget is None else (budget.nanos, budget.period)


def _state(limit: int, remaining: int, reset_ms: int) -> LimitState | None:
    return LimitState(limit, remaining, reset_ms) if limit > 0 else None


class RedisStore(RedisBatchQueue):
    name = "redis"

    def __init__(self, redis: RedisConnection, *, stream_maxlen: int = 1_000_000) -> None:
        self._redis = redis
        self._stream_maxlen = stream_maxlen
        self._admit = _script("admit")
        self._settle = _script("settle")
        self._lease = _script("lease")
        self._release = _script("release")
        self._cache_lookup = _script("cache_lookup", False)
        self._cache_fill = _script("cache_fill", False)
        self._cache_lock = _script("cache_lock", False)
        self._keys_cache: dict[tuple[str, bool], Keys] = {}

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.execute(b"GET", key)
        return value

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        if ttl_s is None:
            await self._redis.execute(b"SET", key, value)
        else:
            await self._redis.execute(b"SET", key, value, b"PX", _ms(ttl_s) or 1)

    async def delete(self, key: str) -> None:
        await self._redis.execute(b"DEL", key)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        flat = await self._redis.execute(b"HGETALL", key)  # RESP2: field, value, field, ...
        pairs = iter(flat)
        return {field.decode(): value for field, value in zip(pairs, pairs, strict=True)}

    async def hget(self, key: str, field: str) -> bytes | None:
        value: bytes | None = await self._redis.execute(b"HGET", key, field)
        return value

    async def hset(self, key: str, field: str, value: bytes) -> None:
        await self._redis.execute(b"HSET", key, field, value)

    async def hdel(self, key: str, field: str) -> bool:
        return bool(await self._redis.execute(b"HDEL", key, field))

    async def sadd(self, key: str, member: str) -> None:
        await self._redis.execute(b"SADD", key, member)

    async def smembers(self, key: str) -> builtins.set[str]:
        return {m.decode() for m in await self._redis.execute(b"SMEMBERS", key)}

    async def xrange(self, key: str, after: str | None, count: int) -> list[tuple[str, bytes]]:
        rows = await self._redis.execute(b"XRANGE", key, f"({after}" if after else b"-", b"+",
                                         b"COUNT", count)
        return [(rid.decode(), _field(fields, b"e")) for rid, fields in rows]

    def _keys(self, team: str, *, settle: bool = False) -> Keys:
        """The keys of the admission and lease scripts (or, `settle`, of the settlement
        script): the same tuple for every request of a team, which the connection then
        encodes once (a bounded cache)."""
        keys = self._keys_cache.get((team, settle))
        if keys is None:
            if len(self._keys_cache) >= _KEYS_CACHED:
                self._keys_cache.clear()  # rarely: cheaper than tracking recency
            ledger = (layout.limiters(team), layout.budget(team), layout.reservations(team))
            names = ((*ledger, layout.rollup(team), layout.events(team), layout.settled(team))
                     if settle else (layout.keys(team), *ledger))
            keys = self._keys_cache[team, settle] = StableKeys(names)
        return keys

    async def admit(self, args: AdmitArgs) -> AdmitResult:
        keys = self._keys(args.team)
        argv = (args.key_id, args.reservation, int(args.check_key), *args.limits(),
                args.tokens, *_budget_args(args.team_budget),
                *_budget_args(args.key_budget), args.cost_nanos, args.ttl_ms)
        out = await self._redis.evalsha(self._admit, keys, argv)
        verdict = out[0].decode()
        if verdict == "ok":
            return AdmitResult(requests=_state(*out[1:4]), tokens=_state(*out[4:7]))
        index, retry = int(out[1]), int(out[2])
        if index == 0:  # revoked, or a budget
            return AdmitResult(verdict)
        state = _state(*out[3:6])
        rpm = LIMITERS[index - 1][2] == "rpm"
        return AdmitResult(verdict, retry, *((state, None) if rpm else (None, state)))

    def _settle_call(self, args: SettleArgs) -> ScriptCall:
        keys = self._keys(args.team, settle=True)
        argv = (args.key_id, args.reservation, args.token_delta, args.key_tpm, args.team_tpm,
                args.cost_nanos, args.team_period, args.key_period, args.model,
                args.prompt_tokens, args.completion_tokens, args.cached_tokens,
                int(args.cache_hit), int(args.error), int(args.estimated), args.event,
                self._stream_maxlen, args.saved_tokens, args.saved_cost_nanos,
                args.reserved_nanos, args.settlement, SETTLED_RETENTION_MS,
                args.cache_write_tokens, args.reasoning_tokens)
        return ScriptCall(self._settle, keys, argv)

    async def settle(self, args: SettleArgs) -> None:
        call = self._settle_call(args)
        await self._redis.evalsha(call.script, call.keys, call.args)

    def _release_call(self, args: Release) -> ScriptCall:
        return ScriptCall(self._release, (layout.budget(args.team),
                                          layout.reservations(args.team)), (args.reservation,))

    async def settle_many(self, batch: Sequence[SettleArgs | Release]) -> None:
        if batch:  # one write, one round trip; each EVALSHA atomic on its own
            await self._redis.execute_many([
                self._settle_call(a) if isinstance(a, SettleArgs) else self._release_call(a)
                for a in batch])

    async def lease(self, args: LeaseArgs) -> LeaseGrant:
        keys = self._keys(args.team)
        argv = (args.key_id, args.lease_id, *args.limits, *args.returning, *args.wanted,
                *args.least, *_budget_args(args.team_budget), *_budget_args(args.key_budget),
                args.ttl_ms, args.share)
        # Never resent: a lease that ran twice would give back what it holds twice.
        out = await self._redis.evalsha(self._lease, keys, argv, once=True)
        verdict = out[0].decode()
        if verdict != "ok":
            return LeaseGrant(verdict)
        requests, tokens, nanos = (math.inf if n < 0 else float(n) for n in out[1:4])
        return LeaseGrant("", (requests, tokens, nanos), _state(*out[4:7]), _state(*out[7:10]))

    # Invalidations (gateway/accounting/invalidation.py): a channel every process hears.

    async def publish(self, channel: str, message: bytes) -> int:
        """How many subscribers received it."""
        return int(await self._redis.execute(b"PUBLISH", channel, message))

    async def ack(self, key: str, ttl_ms: int) -> None:
        """Append one acknowledgement to list `key`, which lapses after `ttl_ms`."""
        await self._redis.execute_many([(b"RPUSH", key, b"1"), (b"PEXPIRE", key, ttl_ms)])

    async def count(self, key: str) -> int:
        """The length of list `key` (0 when absent)."""
        return int(await self._redis.execute(b"LLEN", key))

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Subscription:
        """A subscription to `channel` on a connection of its own (not started)."""
        return self._redis.subscription(channel, on_message, on_down, on_up)

    async def cache_lookup(self, key: str, lock: str, token: bytes,
                           lock_ttl_s: float) -> tuple[bytes | None, bool]:
        lock_ms = _ms(lock_ttl_s) or 0 if lock_ttl_s > 0 else 0
        out = await self._redis.evalsha(self._cache_lookup, (key, lock), (token, lock_ms))
        return (out, False) if isinstance(out, bytes) else (None, out == 1)

    async def cache_finish(self, writes: Sequence[CacheWrite]) -> None:
        if writes:  # one write, one round trip; each script atomic on its own
            await self._redis.execute_many([
                ScriptCall(self._cache_fill, (w.key, w.lock),
                           (w.value, _ms(w.ttl_s) or 1, w.token)) if w.value is not None
                else ScriptCall(self._cache_lock, (w.lock,), (w.token, 0))  # 0: unlock
                for w in writes])

    async def cache_renew(self, locks: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        ttl_ms = _ms(ttl_s) or 1
        if locks:
            await self._redis.execute_many([ScriptCall(self._cache_lock, (lock,), (token, ttl_ms))
                                            for lock, token in locks])

    async def limiter_tats(self, team: str) -> tuple[float, dict[str, float]]:
        sec, usec = await self._redis.execute(b"TIME")  # the scripts' clock, not ours
        flat = await self._redis.execute(b"HGETALL", layout.limiters(team))
        pairs = iter(flat)
        return (int(sec) * 1000 + int(usec) / 1000,
                {field.decode(): float(tat) for field, tat in zip(pairs, pairs, strict=True)})

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.execute(b"PING") == b"PONG")
        except (StoreUnavailable, RespError):
            return False

    async def close(self) -> None:
        await self._redis.close()


def _field(flat: list[Any], name: bytes) -> Any:
    """A field's value in a RESP2 flat field/value list (a stream entry's fields)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))[name]
