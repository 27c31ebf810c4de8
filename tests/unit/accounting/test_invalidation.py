"""Invalidations and the principal cache: a lookup that a change overtakes is not cached,
and a restart with the same config announces nothing (every process keeps its caches
and leases)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.accounting.accounts import Accounts, lookup_principal
from gateway.accounting.invalidation import CHANNEL, Change, Invalidations
from gateway.config.accounts import TeamConfig
from gateway.store import MemoryStore, RedisStore, Store
from policies.keys import Principal, hash_key
from tests.support.accounts import auth, authentication, new_key
from tests.support.procs import RedisServer
from tests.support.stores import redis_store


def teams(name: str, key: str, rpm: int = 100) -> list[TeamConfig]:
    return [TeamConfig.model_validate({"name": name, "limits": {"rpm": rpm},
                                       "keys": [{"id": "k1", "key": key}]})]


async def test_a_lookup_overtaken_by_a_change_is_not_cached(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    key = new_key()
    authenticator, accounts = authentication(store, teams("t", key), 60)
    await accounts.start(teams("t", key))
    looked_up, release = asyncio.Event(), asyncio.Event()

    async def slow(store: Store, digest: str) -> Principal | None:
        found = await lookup_principal(store, digest)  # the policy as it was
        looked_up.set()
        await release.wait()
        return found

    monkeypatch.setattr("gateway.accounting.admission.lookup_principal", slow)
    pending = asyncio.ensure_future(
        authenticator.authenticate(auth(key)["authorization"].encode()))
    await looked_up.wait()
    authenticator.cache.changed(Change("t"))  # the team's policy changed meanwhile
    release.set()
    assert (await pending).team == "t"  # this request, already under way, goes on
    assert hash_key(key) not in authenticator.cache  # the next one looks it up again


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = redis_store(redis_server.url)
    yield s
    await s.close()


async def test_seeding_the_same_config_again_announces_nothing(
        store: RedisStore, redis_server: RedisServer) -> None:
    name, key = "seed" + os.urandom(3).hex(), new_key()
    watcher = aioredis.Redis.from_url(redis_server.url)
    channel = watcher.pubsub()
    await channel.subscribe(CHANNEL)
    await channel.get_message(timeout=1.0)  # the subscription's confirmation

    async def announced() -> list[bytes]:
        out = []
        while (m := await channel.get_message(timeout=0.2)) is not None:
            if m["type"] == "message" and name.encode() in m["data"]:
                out.append(m["data"])
        return out

    invalidations = Invalidations(store, [])
    await invalidations.start()
    accounts = Accounts(store, invalidations)
    await accounts.seed(teams(name, key))
    assert len(await announced()) == 2  # the new team, the new key
    await accounts.seed(teams(name, key))  # a restart with the same config
    assert await announced() == []
    await accounts.seed(teams(name, key, rpm=200))  # the config changed the team
    assert len(await announced()) == 1
    await invalidations.close()
    await channel.aclose()
    await watcher.aclose()
