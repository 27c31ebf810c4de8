"""Stores for tests, over the real wire: a `RedisStore` on our RESP client for a URL (one
node, a cluster found from one of its nodes, or a `redis+sentinel://` master), and the
kinds the store contract tests run on."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from gateway.store import MemoryStore, RedisStore, Store
from gateway.wire.redis_client import open_redis

STORES = ("memory", "redis", "cluster")  # every store the contract holds for
REDIS_KINDS = ("redis", "cluster")  # one redis-server, a Redis Cluster (3 masters + 3 replicas)


def redis_store(url: str, *, timeout_s: float = 1.0, stream_maxlen: int = 1_000_000
                ) -> RedisStore:
    return RedisStore(open_redis(url, timeout_s=timeout_s), stream_maxlen=stream_maxlen)


def redis_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The session's Redis of `kind` (a cluster is started only when a test asks for it)."""
    server = request.getfixturevalue("redis_cluster" if kind == "cluster" else "redis_server")
    return str(server.url)


def store_of(request: pytest.FixtureRequest, kind: str) -> Store:
    return MemoryStore() if kind == "memory" else redis_store(redis_url(request, kind))


def inspector(kind: str, url: str) -> Any:
    """An independent client (redis-py) to set up and look behind the store's back."""
    return redis.RedisCluster.from_url(url) if kind == "cluster" else redis.Redis.from_url(url)


def async_inspector(kind: str, url: str) -> Any:
    return (aioredis.RedisCluster.from_url(url) if kind == "cluster"
            else aioredis.Redis.from_url(url))
