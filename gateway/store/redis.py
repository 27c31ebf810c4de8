"""Redis store (redis.asyncio with hiredis): shared by every worker and replica."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store import layout
from gateway.store.base import LIMITERS, AdmitArgs, AdmitResult, SettleArgs, StoreUnavailable
from policies.budgets import Budget
from policies.ratelimits import LimitState

_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_LUA = Path(__file__).with_name("lua")


def _script(name: str, common: bool = True) -> str:
    return ((_LUA / "common.lua").read_text() if common else "") + (
        _LUA / f"{name}.lua").read_text()


def _ms(ttl_s: float | None) -> int | None:
    return None if ttl_s is None else max(1, int(ttl_s * 1000))


def _budget_args(budget: Budget | None, period: str = "monthly") -> tuple[int, str]:
    return (-1, period) if budget is None else (budget.nanos, budget.period)


def _state(limit: int, remaining: int, reset_ms: int) -> LimitState | None:
    return LimitState(limit, remaining, reset_ms) if limit > 0 else None


class RedisStore:
    name = "redis"

    def __init__(self, url: str, *, timeout_s: float = 1.0, stream_maxlen: int = 1_000_000,
                 max_connections: int = 100) -> None:
        # One quick retry (a pooled connection may be stale after a Redis restart), no
        # backoff: an outage must surface at once so the outage policy can act on it.
        # A bursty process waits briefly for a pooled connection rather than failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=30, retry=Retry(NoBackoff(), 1),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._stream_maxlen = stream_maxlen
        self._admit = self._redis.register_script(_script("admit"))
        self._settle = self._redis.register_script(_script("settle"))
        self._cache_lookup = self._redis.register_script(_script("cache_lookup", False))
        self._cache_fill = self._redis.register_script(_script("cache_fill", False))
        self._cache_lock = self._redis.register_script(_script("cache_lock", False))

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except _DOWN as err:
            raise StoreUnavailable(f"redis unavailable ({type(err).__name__})") from None

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(self._redis.get, key)
        return value

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        await self._call(self._redis.set, key, value, px=_ms(ttl_s))

    async def delete(self, key: str) -> None:
        await self._call(self._redis.delete, key)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        raw = await self._call(self._redis.hgetall, key)
        return {k.decode(): v for k, v in raw.items()}

    async def hget(self, key: str, field: str) -> bytes | None:
        value: bytes | None = await self._call(self._redis.hget, key, field)
        return value

    async def hset(self, key: str, field: str, value: bytes) -> None:
        await self._call(self._redis.hset, key, field, value)

    async def hdel(self, key: str, field: str) -> bool:
        return bool(await self._call(self._redis.hdel, key, field))

    async def sadd(self, key: str, member: str) -> None:
        await self._call(self._redis.sadd, key, member)

    async def smembers(self, key: str) -> builtins.set[str]:
        return {m.decode() for m in await self._call(self._redis.smembers, key)}

    async def xrange(self, key: str, after: str | None, count: int) -> list[tuple[str, bytes]]:
        rows = await self._call(self._redis.xrange, key, f"({after}" if after else "-", "+",
                                count)
        return [(rid.decode(), fields[b"e"]) for rid, fields in rows]

    async def admit(self, args: AdmitArgs) -> AdmitResult:
        t = args.team
        keys = [layout.keys(t),
                *(layout.limiter(t, args.key_id if per_key else None, kind)
                  for _, per_key, kind in LIMITERS),
                layout.budget(t), layout.reservations(t)]
        argv = [args.key_id, args.request_id, int(args.check_key), *args.limits(),
                args.tokens, *_budget_args(args.team_budget),
                *_budget_args(args.key_budget), args.cost_nanos, args.ttl_ms]
        out = await self._call(self._admit, keys=keys, args=argv)
        verdict = out[0].decode()
        if verdict == "ok":
            return AdmitResult(requests=_state(*out[1:4]), tokens=_state(*out[4:7]))
        index, retry = int(out[1]), int(out[2])
        if index == 0:  # revoked, or a budget
            return AdmitResult(verdict)
        state = _state(*out[3:6])
        rpm = LIMITERS[index - 1][2] == "rpm"
        return AdmitResult(verdict, retry, *((state, None) if rpm else (None, state)))

    def _settle_call(self, args: SettleArgs) -> tuple[list[str], list[Any]]:
        t = args.team
        keys = [layout.limiter(t, args.key_id, "tpm"), layout.limiter(t, None, "tpm"),
                layout.budget(t), layout.reservations(t), layout.rollup(t), layout.events(t)]
        argv = [args.key_id, args.request_id, args.token_delta, args.key_tpm, args.team_tpm,
                args.cost_nanos, args.team_period, args.key_period, args.model,
                args.prompt_tokens, args.completion_tokens, args.cached_tokens,
                int(args.cache_hit), int(args.error), int(args.estimated), args.event,
                self._stream_maxlen, args.saved_tokens, args.saved_cost_nanos]
        return keys, argv

    async def settle(self, args: SettleArgs) -> None:
        keys, argv = self._settle_call(args)
        await self._call(self._settle, keys=keys, args=argv)

    async def settle_many(self, batch: Sequence[SettleArgs]) -> None:
        if len(batch) == 1:
            await self.settle(batch[0])
            return
        pipe = self._redis.pipeline(transaction=False)
        for args in batch:
            keys, argv = self._settle_call(args)
            await self._settle(keys=keys, args=argv, client=pipe)  # queued, not sent
        await self._call(pipe.execute)

    async def cache_lookup(self, key: str, lock: str, token: bytes,
                           lock_ttl_s: float) -> tuple[bytes | None, bool]:
        lock_ms = _ms(lock_ttl_s) or 0 if lock_ttl_s > 0 else 0
        out = await self._call(self._cache_lookup, keys=[key, lock], args=[token, lock_ms])
        return (out, False) if isinstance(out, bytes) else (None, out == 1)

    async def cache_fill(self, key: str, value: bytes, ttl_s: float, lock: str,
                         token: bytes) -> None:
        await self._call(self._cache_fill, keys=[key, lock],
                         args=[value, _ms(ttl_s) or 1, token])

    async def cache_unlock(self, lock: str, token: bytes) -> None:
        await self._call(self._cache_lock, keys=[lock], args=[token, 0])

    async def cache_renew(self, locks: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for lock, token in locks:
            await self._cache_lock(keys=[lock], args=[token, _ms(ttl_s) or 1], client=pipe)
        await self._call(pipe.execute)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except _DOWN:
            return False

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)
