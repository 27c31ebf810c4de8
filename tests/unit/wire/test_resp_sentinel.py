"""Our RESP client behind real Sentinels (a master, a replica, three `redis-server
--sentinel`): the master found through the first sentinel that answers, a failover
followed whether the old master dies or is demoted (READONLY), a subscription moving
with the master."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import StoreUnavailable
from gateway.wire.base import Script
from gateway.wire.redis_client import open_redis
from gateway.wire.resp_sentinel import SentinelClient
from tests.support.procs import RedisSentinel, command, free_port

INCR = Script("incr", b"return redis.call('INCR', KEYS[1])")


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    """One per test: each fails the master over."""
    s = RedisSentinel(tmp_path)
    yield s
    s.stop()


def tag() -> str:
    return os.urandom(4).hex()


async def until(check: object, what: str, limit_s: float = 15) -> float:
    """Poll the coroutine function `check` until it returns truthy; seconds it took."""
    started = time.monotonic()
    while not await check():  # type: ignore[operator]
        assert time.monotonic() - started < limit_s, what
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_the_master_is_found_through_the_sentinels(sentinel: RedisSentinel) -> None:
    dead = free_port()  # the first sentinel named is down: the next is asked
    url = sentinel.url.replace("redis+sentinel://", f"redis+sentinel://127.0.0.1:{dead},")
    client = open_redis(url)
    assert isinstance(client, SentinelClient)
    key = "k:" + tag()
    assert await client.evalsha(INCR, (key,), []) == 1
    assert command(sentinel.master.port, "GET", key) == b"1"
    assert await client.execute_many([(b"INCR", key), (b"GET", key)]) == [2, b"2"]
    assert "127.0.0.1" not in repr(client) or str(dead) not in repr(client)
    await client.close()


async def test_a_killed_master_is_followed_to_the_promoted_replica(
        sentinel: RedisSentinel) -> None:
    client = open_redis(sentinel.url, timeout_s=0.5)
    key = "k:" + tag()
    assert await client.execute(b"SET", key, b"1") == b"OK"
    sentinel.master.kill()
    failures = 0

    async def written() -> bool:
        nonlocal failures
        try:
            return bool(await client.execute(b"INCR", key))
        except StoreUnavailable:
            failures += 1
            return False

    took = await until(written, "no new master followed")
    assert failures > 0 and took < 10
    assert command(sentinel.replica.port, "GET", key) == b"2"  # the promoted replica
    await client.close()


async def test_a_failover_is_followed_at_once_and_the_subscription_moves(
        sentinel: RedisSentinel) -> None:
    """SENTINEL FAILOVER: the old master lives on, and takes writes, until the sentinels
    demote it (seconds later). The client leaves it on the sentinels' +switch-master, not
    when the demotion closes its connection; its subscription moves to the new master
    too, so that PUBLISH counts it."""
    client = open_redis(sentinel.url)
    key = "k:" + tag()
    assert await client.evalsha(INCR, (key,), []) == 1
    heard: list[bytes] = []
    states: list[str] = []
    sub = client.subscription("chan", heard.append, lambda: states.append("down"),
                              lambda: states.append("up"))
    await sub.start()
    old = sentinel.master.port
    assert command(sentinel.sentinels[0].port, "SENTINEL", "FAILOVER", "mymaster") == b"OK"

    async def switched() -> bool:
        return sentinel.master_port() != old

    await until(switched, "no failover")
    assert command(old, "ROLE")[0] == b"master"  # not demoted yet: it would take writes

    new = sentinel.replica.port

    async def followed() -> bool:  # the write lands on the new master
        before = int(command(new, "GET", key) or 0)
        await client.evalsha(INCR, (key,), [])
        return int(command(new, "GET", key) or 0) == before + 1

    assert await until(followed, "writes still go to the old master") < 1.0
    assert command(old, "ROLE")[0] == b"master"  # it was left before it was demoted

    async def moved() -> bool:
        return states[-1:] == ["up"] and await client.execute(b"PUBLISH", "chan", b"hi") == 1

    took = await until(moved, "the subscription did not move")
    assert states[:3] == ["up", "down", "up"] and took < 3, (states, took)
    await sub.close()
    await client.close()
