"""Shared state behind one interface: Redis for fleets, in-memory for a single process."""

from __future__ import annotations

from gateway.store.base import Store, StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore


def open_store(redis_url: str | None) -> Store:
    return RedisStore(redis_url) if redis_url else MemoryStore()


__all__ = ["MemoryStore", "RedisStore", "Store", "StoreUnavailable", "open_store"]
