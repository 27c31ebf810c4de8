"""Shared state behind one interface: Redis for fleets, in-memory for a single process."""

from __future__ import annotations

from gateway.store.base import (
    ALL,
    AdmitArgs,
    AdmitResult,
    CacheWrite,
    LeaseArgs,
    LeaseGrant,
    Release,
    SettleArgs,
    Store,
    StoreUnavailable,
)
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.wire.base import RedisConnection


def open_store(redis: RedisConnection | None, *, stream_maxlen: int = 1_000_000) -> Store:
    """Redis when there is a connection to it, else in-memory (one process)."""
    if redis is not None:
        return RedisStore(redis, stream_maxlen=stream_maxlen)
    return MemoryStore(stream_maxlen=min(stream_maxlen, 100_000))


__all__ = ["ALL", "AdmitArgs", "AdmitResult", "CacheWrite", "LeaseArgs", "LeaseGrant",
           "MemoryStore", "RedisStore", "Release", "SettleArgs", "Store", "StoreUnavailable",
           "open_store"]
