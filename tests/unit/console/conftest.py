from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.store import MemoryStore, Store
from tests.support.procs import RedisServer
from tests.support.stores import redis_store


@pytest.fixture(params=["memory", "redis"])
async def console_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each store the console runs on: in memory, and a real redis-server (a database of
    its own, 7: no test gateway's console keys in it)."""
    if request.param == "memory":
        s: Store = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = redis_store(server.url[:-1] + "7")
    yield s
    await s.close()
