"""Self-healing: what the config declares is put back when Redis lost it (flushed,
restarted empty, failed over to a replica that never had it), without a restart; what
Redis still holds (spend, limits) is kept; a config key revoked through the admin API
stays revoked. On one redis-server and on a Redis Cluster, private to this module (its
tests flush them)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from gateway.accounting import accounts as accounts_module
from gateway.accounting.invalidation import Change
from gateway.config.accounts import TeamConfig
from gateway.errors import GatewayError
from gateway.store import AdmitArgs, RedisStore, layout
from policies.budgets import Budget
from policies.keys import hash_key
from policies.ratelimits import Limits
from tests.support.accounts import auth, authentication, new_key
from tests.support.procs import RedisCluster, RedisServer, command
from tests.support.stores import redis_store


class Recorder:
    """A listener that notes what is announced."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def changed(self, change: Change) -> None:
        self.changes.append(change)

    def down(self) -> None: ...

    def up(self) -> None: ...


@pytest.fixture(scope="module", params=["redis", "cluster"])
def redis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[RedisServer | RedisCluster]:
    """Private to this module: its tests flush it (each its own team)."""
    workdir = tmp_path_factory.mktemp("heal")
    server = RedisServer(workdir) if request.param == "redis" else RedisCluster(workdir)
    yield server
    server.stop()


def flush(redis: RedisServer | RedisCluster) -> None:
    """Everything gone, as after a restart without persistence."""
    nodes = redis.live() if isinstance(redis, RedisCluster) else [redis]
    for node in nodes:
        command(node.port, "FLUSHALL")  # (a replica refuses: its master's flush reaches it)


class Setup:
    def __init__(self, store: RedisStore, key: str) -> None:
        self.store, self.key = store, key
        self.team = "heal-" + os.urandom(3).hex()
        self.teams = [TeamConfig.model_validate({
            "name": self.team, "limits": {"rpm": 1000},
            "budget": {"usd": 1, "period": "daily"},
            "keys": [{"id": "k1", "key": key}, {"id": "k2", "key": new_key()}]})]
        self.heard = Recorder()
        self.auth, self.accounts = authentication(store, self.teams, 60, [self.heard])

    async def who(self) -> Any:
        self.auth.cache.up()  # forget what was cached: the next lookup asks the store
        return await self.auth.authenticate(auth(self.key)["authorization"].encode())

    async def spend(self, nanos: int) -> None:
        args = AdmitArgs(team=self.team, key_id="k1", reservation=os.urandom(6).hex(),
                         check_key=True, key_limits=Limits(), team_limits=Limits(rpm=1000),
                         tokens=0, team_budget=Budget(10**9, "daily"), key_budget=None,
                         cost_nanos=nanos, ttl_ms=60_000)
        assert (await self.store.admit(args)).refused == ""


@pytest.fixture
async def setup(redis: RedisServer | RedisCluster) -> AsyncIterator[Setup]:
    s = Setup(redis_store(redis.url), new_key())
    await s.accounts.start(s.teams)
    yield s
    await s.accounts.stop()
    await s.store.close()


async def test_a_lookup_that_finds_a_declared_key_missing_puts_it_back(
        setup: Setup, redis: RedisServer | RedisCluster) -> None:
    assert (await setup.who()).team == setup.team
    await setup.spend(300)
    # Lost: the team's records and the key index (the budget's spend survives).
    for key in (layout.team(setup.team), layout.keys(setup.team),
                layout.key_index(hash_key(setup.key))):
        await setup.store.delete(key)
    setup.heard.changes.clear()
    found = await setup.who()  # no 401: this very lookup puts it back and finds it
    assert (found.team, found.key_id, found.team_limits.rpm) == (setup.team, "k1", 1000)
    assert setup.accounts.healed == 1
    budget = await setup.store.hgetall(layout.budget(setup.team))
    assert budget["reserved"] == b"300"  # what Redis still had goes on
    # Announced: the team (its record was gone) and both its keys; nothing else.
    assert {(c.team, c.key_id) for c in setup.heard.changes} == {
        (setup.team, None), (setup.team, "k1"), (setup.team, "k2")}


async def test_a_flushed_store_is_seeded_again_by_the_probe(
        setup: Setup, redis: RedisServer | RedisCluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await setup.accounts.stop()
    monkeypatch.setattr(accounts_module, "_PROBE_S", 0.05)
    setup.heard.changes.clear()
    await setup.accounts.start(setup.teams)  # no announcement: nothing differs
    assert setup.heard.changes == []
    flush(redis)
    # With no request at all, the probe notices and puts everything back.
    await until(lambda: command_get(setup, redis) is not None and setup.accounts.healed >= 1)
    assert await setup.store.smembers(layout.TEAMS) == {setup.team}
    assert len(await setup.accounts.keys(setup.team)) == 2
    assert (await setup.who()).key_id == "k1"


async def until(check: Callable[[], bool], limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, "not put back in time"
        await asyncio.sleep(0.02)


def command_get(setup: Setup, redis: RedisServer | RedisCluster) -> Any:
    key = layout.team(setup.team)
    node = redis.master_of(key) if isinstance(redis, RedisCluster) else redis
    return command(node.port, "GET", key)


async def test_a_config_key_revoked_through_the_admin_api_stays_revoked(
        setup: Setup) -> None:
    assert await setup.accounts.revoke_key(setup.team, "k1") is True
    with pytest.raises(GatewayError) as err:
        await setup.who()
    assert err.value.status == 401
    assert setup.accounts.healed == 0
    assert await setup.accounts._missing() == []  # the probe does not see it as lost
    assert [k.id for k in await setup.accounts.keys(setup.team)] == ["k2"]


async def test_an_unknown_key_costs_no_healing(setup: Setup) -> None:
    setup.key = new_key()
    with pytest.raises(GatewayError):
        await setup.who()
    assert setup.accounts.healed == 0 and setup.accounts._healing == {}
