"""Redis store (redis.asyncio with hiredis): shared by every worker and replica."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.base import StoreUnavailable

# INCRBY, and give the key its TTL if it has none, atomically (a client-side INCRBY then
# EXPIRE pair leaves an immortal counter when the process dies between the two).
_INCR = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
"""

_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def _ms(ttl_s: float | None) -> int | None:
    return None if ttl_s is None else max(1, int(ttl_s * 1000))


class RedisStore:
    name = "redis"

    def __init__(self, url: str, *, timeout_s: float = 1.0) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        self._incr = self._redis.register_script(_INCR)

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

    async def set_if_absent(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        return bool(await self._call(self._redis.set, key, value, px=_ms(ttl_s), nx=True))

    async def delete(self, key: str) -> None:
        await self._call(self._redis.delete, key)

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        return int(await self._call(self._incr, keys=[key], args=[amount, _ms(ttl_s) or 0]))

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except _DOWN:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
