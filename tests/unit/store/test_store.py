"""The same contract for both stores: in-memory, and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.store import Store, StoreUnavailable
from tests.support.procs import free_port
from tests.support.stores import STORES, redis_store, store_of


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = store_of(request, request.param)
    yield s
    await s.close()


def key(request: pytest.FixtureRequest, name: str) -> str:
    return f"{request.node.name}:{name}"  # tests share one redis: keep their keys apart


async def test_get_set_delete(store: Store, request: pytest.FixtureRequest) -> None:
    k = key(request, "k")
    assert await store.get(k) is None
    await store.set(k, b"v")
    assert await store.get(k) == b"v"
    await store.delete(k)
    assert await store.get(k) is None


async def test_ttl_expires(store: Store, request: pytest.FixtureRequest) -> None:
    k = key(request, "short")
    await store.set(k, b"v", ttl_s=0.05)
    assert await store.get(k) == b"v"
    await asyncio.sleep(0.15)  # waiting out a TTL is the behaviour under test
    assert await store.get(k) is None


async def test_redis_down_raises_store_unavailable() -> None:
    s = redis_store(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    assert await s.ping() is False
    with pytest.raises(StoreUnavailable):
        await s.get("k")
    await s.close()
