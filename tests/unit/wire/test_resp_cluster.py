"""Our RESP client on a real Redis Cluster (3 masters + 3 replicas, redis-server processes
on free ports): found from any one node, every command on its slot's master, batches
split per master and put back in order, MOVED after a failover and ASK during a slot
migration followed, a killed master's slots served again once its replica takes over, a
subscription following its channel's home."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.store import StoreUnavailable, layout
from gateway.wire.base import Script, ScriptCall, StableKeys
from gateway.wire.redis_client import RedisClient, open_redis
from gateway.wire.resp import RespClient, RespError
from gateway.wire.resp_cluster import ClusterClient, key_slot
from tests.support.procs import RedisCluster, RedisServer, command, free_port
from tests.support.stores import redis_store

INCR = Script("incr", b"return redis.call('INCR', KEYS[1])")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Private to this module: its tests fail masters over."""
    c = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture
async def client(cluster: RedisCluster) -> AsyncIterator[RedisClient]:
    c = open_redis(cluster.url)
    assert isinstance(c, RedisClient)
    yield c
    await c.close()


def tag() -> str:
    return os.urandom(4).hex()


def cluster_of(client: RedisClient) -> ClusterClient:
    assert isinstance(client.client, ClusterClient)
    return client.client


def held_by(cluster: RedisCluster, key: str) -> RedisServer:
    return cluster.master_of(key)


# --- Finding it, routing --------------------------------------------------------------------

async def test_any_node_finds_the_cluster_and_each_key_goes_to_its_master(
        cluster: RedisCluster) -> None:
    replica = cluster.replica_of(cluster.nodes[0])
    client = open_redis(f"redis://127.0.0.1:{replica.port}/0")  # a replica will do
    t = tag()
    keys = [f"k{i}:{t}" for i in range(60)]
    assert await asyncio.gather(*(client.execute(b"SET", k, k) for k in keys)) == [b"OK"] * 60
    assert isinstance(client, RedisClient) and isinstance(client.client, ClusterClient)
    for k in keys:  # each on the master of its slot, straight (no redirection)
        assert command(held_by(cluster, k).port, "GET", k) == k.encode()
    assert len({held_by(cluster, k).port for k in keys}) == 3
    assert client.client.redirects == 0
    await client.close()


async def test_a_plain_node_stays_a_plain_client(redis_server: RedisServer) -> None:
    client = open_redis(redis_server.url)
    assert await client.execute(b"PING") == b"PONG"
    assert isinstance(client, RedisClient) and type(client.client) is RespClient
    await client.close()


async def test_seeds_are_tried_in_order(cluster: RedisCluster) -> None:
    dead = free_port()
    client = open_redis(f"redis://127.0.0.1:{dead},127.0.0.1:{cluster.nodes[1].port}")
    assert await client.execute(b"SET", "seeded:" + tag(), b"v") == b"OK"
    await client.close()


def test_slots_are_redis_own(cluster: RedisCluster) -> None:
    port = cluster.nodes[0].port
    for k in ("turnout:{team-a}:budget", "plain-key", "{}odd", "a{b}c{d}", "turnout:teams",
              layout.cache_entry("team:t", "ab" * 32), "é{ü}"):
        assert key_slot(k) == command(port, "CLUSTER", "KEYSLOT", k), k


def test_every_key_of_a_team_shares_its_slot() -> None:
    """Whatever layout.py names for a team (what the team's scripts get as KEYS: records,
    limiters, budget, reservations, settled ids, rollups, events, and any added later)
    is in the team's slot; a cache entry and its lock share one."""
    for team in ("research", "t-1", "a.b", "{odd}"):
        named = 0
        for name, make in vars(layout).items():
            if name.startswith("_") or not inspect.isfunction(make):
                continue
            params = list(inspect.signature(make).parameters)
            if params[:1] not in (["name"], ["team"]):
                continue
            key = make(team, *(f"id-{i}" for i in range(len(params) - 1)))
            assert key_slot(key) == key_slot(f"{{{team}}}"), (name, key)
            named += 1
        assert named >= 8
    entry = layout.cache_entry("shared", "0f" * 32)
    assert key_slot(entry) == key_slot(layout.cache_lock(entry))


async def test_a_script_over_two_slots_is_refused_before_it_is_sent(
        client: RedisClient) -> None:
    with pytest.raises(RespError) as err:
        await client.evalsha(INCR, ("{a}x", "{b}x"), [])
    assert err.value.code == "CROSSSLOT"


async def test_a_batch_is_split_per_master_and_answered_in_order(
        client: RedisClient, cluster: RedisCluster) -> None:
    t = tag()
    keys = [f"n{i}:{t}" for i in range(90)]
    command(held_by(cluster, keys[45]).port, "SET", keys[45], "text")
    batch = [ScriptCall(INCR, StableKeys((k,)), ()) if i % 2 else (b"INCR", k)
             for i, k in enumerate(keys)]
    with pytest.raises(RespError) as err:  # the error after every command ran
        await client.execute_many(batch)
    assert err.value.code == "ERR"
    batch[45] = (b"GET", keys[45])
    replies = await client.execute_many(batch)
    assert replies[45] == b"text"
    assert [r for i, r in enumerate(replies) if i != 45] == [2] * 89
    assert cluster_of(client).redirects == 0


# --- Redirections ---------------------------------------------------------------------------

async def test_moved_after_a_failover_is_followed_and_the_map_refreshed(
        client: RedisClient, cluster: RedisCluster) -> None:
    t = tag()
    key = f"moved:{t}"
    assert await client.execute(b"SET", key, b"1") == b"OK"  # the map is loaded
    master = held_by(cluster, key)
    same_master = [k for k in (f"m{i}:{t}" for i in range(200))
                   if held_by(cluster, k).port == master.port][:20]
    cluster.failover(cluster.replica_of(master))  # graceful: no write lost
    assert held_by(cluster, key).port != master.port
    assert await client.execute(b"INCR", key) == 2  # MOVED, followed
    redirected = cluster_of(client).redirects
    assert redirected == 1
    deadline = time.monotonic() + 5
    for k in same_master:  # the whole range moved: after the refresh, no more MOVED
        while True:
            assert await client.evalsha(INCR, StableKeys((k,)), []) >= 1
            if cluster_of(client).redirects == redirected or time.monotonic() > deadline:
                break
            redirected = cluster_of(client).redirects
    assert cluster_of(client).redirects == redirected


async def test_ask_during_a_slot_migration_is_followed(
        client: RedisClient, cluster: RedisCluster) -> None:
    key = f"{{ask-{tag()}}}k"
    source = held_by(cluster, key)
    target = next(n for n in cluster.live() if n.port != source.port
                  and _info_role(n) == "master")
    slot = key_slot(key)
    ids = {n.port: command(n.port, "CLUSTER", "MYID").decode() for n in (source, target)}
    await client.execute(b"PING")  # the map is loaded
    assert command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port]) == b"OK"
    assert command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port]) == b"OK"
    try:
        # The key is not on the source: it answers ASK, and the target takes it once asked.
        assert await client.evalsha(INCR, (key,), []) == 1
        assert await client.execute_many([(b"INCR", key), ScriptCall(INCR, (key,), [])]) == [2, 3]
        # (A script the target lacks is loaded there, and costs one more redirection.)
        assert cluster_of(client).redirects >= 3
        # Not on the source (which asks it of the target for it): on the target.
        assert str(command(source.port, "EXISTS", key)).startswith("ASK ")
    finally:
        for node in (source, target):  # the slot stays with the source
            assert command(node.port, "CLUSTER", "SETSLOT", slot, "STABLE") == b"OK"


def _info_role(node: RedisServer) -> str:
    info = command(node.port, "ROLE")
    return info[0].decode() if isinstance(info, list) else ""


# --- Failures -------------------------------------------------------------------------------

async def test_a_store_keeps_working_through_a_failover(
        client: RedisClient, cluster: RedisCluster) -> None:
    store = redis_store(cluster.url)
    team = "f" + tag()
    await store.set(layout.team(team), b"{}")
    cluster.failover(cluster.replica_of(held_by(cluster, layout.team(team))))
    assert await store.get(layout.team(team)) == b"{}"
    await store.close()


async def test_a_killed_master_is_replaced_and_followed(tmp_path: Path) -> None:
    """Its slots fail (StoreUnavailable: the outage policy's) until its replica takes over
    (the cluster's node timeout is 1 s here), then work again on the same client."""
    own = RedisCluster(tmp_path, node_timeout_ms=1000)
    try:
        client = open_redis(own.url, timeout_s=0.5)
        key = f"killed:{tag()}"
        assert await client.execute(b"SET", key, b"1") == b"OK"
        victim = held_by(own, key)
        own.synced(victim)  # (a write its replica lacks would be lost with it)
        victim.kill()
        killed = time.monotonic()
        failures = 0
        while True:
            try:
                assert await client.execute(b"INCR", key) >= 2
                break
            except StoreUnavailable:
                failures += 1
                assert time.monotonic() - killed < 20, "no replica took over"
                await asyncio.sleep(0.05)
        assert failures > 0  # (it was down for a while)
        assert held_by(own, key).port != victim.port
        await client.close()
    finally:
        own.stop()


async def test_a_subscription_follows_its_channel_home_through_a_failover(
        client: RedisClient, cluster: RedisCluster) -> None:
    channel = f"chan-{tag()}"
    heard: list[bytes] = []
    states: list[str] = []
    sub = client.subscription(channel, heard.append, lambda: states.append("down"),
                              lambda: states.append("up"))
    await sub.start()
    assert sub.live and states == ["up"]
    assert await client.execute(b"PUBLISH", channel, b"one") == 1  # its home counts it
    home = held_by(cluster, channel)
    cluster.failover(cluster.replica_of(home))
    # Traffic to the moved slots meets MOVED and refreshes the map (else the periodic
    # refresh would, within 5 s); at its next PING the subscription moves to the new home.
    assert await client.execute(b"SET", f"{{{channel}}}k", b"v") == b"OK"
    deadline = time.monotonic() + 15
    while states != ["up", "down", "up"]:
        assert time.monotonic() < deadline, states
        await asyncio.sleep(0.05)
    assert held_by(cluster, channel).port != home.port
    assert await client.execute(b"PUBLISH", channel, b"two") == 1  # the new home counts it
    deadline = time.monotonic() + 5
    while heard[-1] != b"two":
        assert time.monotonic() < deadline, heard
        await asyncio.sleep(0.01)
    assert heard == [b"one", b"two"]
    await sub.close()
