"""Stores for tests, over the real wire: a `RedisStore` on our RESP client for a URL."""

from __future__ import annotations

from gateway.store import RedisStore
from gateway.wire.redis_url import parse_url
from gateway.wire.resp import RespClient


def redis_store(url: str, *, timeout_s: float = 1.0, stream_maxlen: int = 1_000_000
                ) -> RedisStore:
    return RedisStore(RespClient(parse_url(url), timeout_s=timeout_s),
                      stream_maxlen=stream_maxlen)
