"""The store's own RESP2 client (gateway/wire/resp.py) against real redis-servers:
pipelining, NOSCRIPT recovery, reconnects, timeouts, error replies, AUTH, unix sockets, TLS."""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hiredis
import pytest
import redis

from gateway.store import AdmitArgs, CacheWrite, StoreUnavailable, layout
from gateway.wire.base import Script, ScriptCall, StableKeys
from gateway.wire.redis_url import parse_url
from gateway.wire.resp import NoScriptError, RespClient, RespError, _script_command
from gateway.wire.resp_codec import Encoded, bulks, encode
from policies.ratelimits import Limits
from tests.support.procs import RedisServer, free_port, make_tls_files
from tests.support.stores import redis_store

PASSWORD = "s3cret-" + os.urandom(6).hex()  # a value that could not appear by accident
INCR_ECHO = Script("incr_echo", b"return {redis.call('INCR', KEYS[1]), ARGV[1]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Private to this module: its tests kill clients, pause and flush scripts."""
    s = RedisServer(tmp_path_factory.mktemp("resp"), unix_socket=True)
    yield s
    s.stop()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    """An independent client (redis-py) to set things up and look behind ours' back."""
    r = redis.Redis.from_url(server.url)
    yield r
    r.client_unpause()
    r.close()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[RespClient]:
    c = RespClient(parse_url(server.url), timeout_s=1.0)
    yield c
    await c.close()


def key(request: pytest.FixtureRequest, name: str) -> str:
    return f"{request.node.name}:{name}"


def connections_received(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


def kill_other_clients(admin: redis.Redis) -> None:
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


def admit_args(team: str) -> AdmitArgs:
    return AdmitArgs(team=team, key_id="k1", reservation=os.urandom(6).hex(), check_key=False,
                     key_limits=Limits(rpm=1000), team_limits=Limits(), tokens=10,
                     team_budget=None, key_budget=None, cost_nanos=0, ttl_ms=60_000)


# --- Encoding and URLs ---------------------------------------------------------------------

def test_encoding_matches_hiredis() -> None:
    args = (b"SET", "k\u00e9y", b"\x00\r\n", 0, 7, 1023, 1024, -1, 2**70, 1.5, -0.25, "")
    assert encode(args) == hiredis.pack_command(args)
    script = Script("one", b"return 1")
    keys = StableKeys(("a", "b"))
    command = _script_command({}, ScriptCall(script, keys, [3, b"x"]),
                              Encoded(len(keys), bulks(keys)))
    assert command == hiredis.pack_command((b"EVALSHA", script.sha, 2, "a", "b", 3, b"x"))
    with pytest.raises(TypeError):
        encode((b"GET", None))  # type: ignore[arg-type]


def test_urls() -> None:
    t = parse_url(f"redis://alice:{PASSWORD}@Example.COM:6390/3")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == \
        ("example.com", 6390, 3, "alice", PASSWORD, None)
    assert PASSWORD not in repr(t)
    assert parse_url("redis://h").port == 6379 and parse_url("redis://h/").db == 0
    assert parse_url("redis://h?db=2").db == 2
    assert parse_url("redis://:p%40ss@h").password == "p@ss"
    u = parse_url("unix:///run/redis.sock?db=4&password=pw")
    assert (u.path, u.db, u.password) == ("/run/redis.sock", 4, "pw")
    tls = parse_url("rediss://h:6380/0").tls
    assert tls is not None and tls.check_hostname
    relaxed = parse_url("rediss://h/0?ssl_cert_reqs=none").tls
    assert relaxed is not None and not relaxed.check_hostname
    for bad in (f"redis://:{PASSWORD}@h/0?socket_timeout=1", f"http://:{PASSWORD}@h",
                f"redis://:{PASSWORD}@h/zero", f"redis://:{PASSWORD}@h:99999"):
        with pytest.raises(ValueError) as err:
            parse_url(bad)
        assert PASSWORD not in str(err.value)


# --- Pipelining ---------------------------------------------------------------------------

async def test_concurrent_commands_pipeline_on_one_connection(
        client: RespClient, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    counter = key(request, "n")
    await client.execute(b"PING")  # connected
    before = connections_received(admin)
    replies = await asyncio.gather(*(client.evalsha(INCR_ECHO, (counter,), [f"caller-{i}"])
                                     for i in range(500)))
    assert [tag for _, tag in replies] == [f"caller-{i}".encode() for i in range(500)]
    assert sorted(n for n, _ in replies) == list(range(1, 501))
    assert admin.get(counter) == b"500"
    echoes = await asyncio.gather(*(client.execute(b"ECHO", i) for i in range(300)))
    assert echoes == [str(i).encode() for i in range(300)]
    assert connections_received(admin) == before  # no pool: the one connection did it all


async def test_batch_in_order_and_errors_after_all(
        client: RespClient, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    k, text = key(request, "n"), key(request, "text")
    admin.set(text, "abc")
    replies = await client.execute_many([(b"INCR", k) for _ in range(5)])
    assert replies == [1, 2, 3, 4, 5]
    with pytest.raises(RespError) as err:
        await client.execute_many([(b"INCR", k), (b"INCR", text),
                                   (b"INCR", k)])
    assert err.value.code == "ERR"
    assert admin.get(k) == b"7"  # the batch ran to the end, the error raised after
    assert await client.execute(b"GET", k) == b"7"


async def test_cancelled_caller_does_not_shift_replies(
        client: RespClient, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    admin.mset({key(request, str(i)): str(i) for i in range(20)})
    tasks = [asyncio.create_task(client.execute(b"GET", key(request, str(i))))
             for i in range(20)]
    await asyncio.sleep(0)  # all sent
    for task in tasks[::2]:
        task.cancel()
    for i, task in enumerate(tasks):
        if i % 2:
            assert await task == str(i).encode()
    assert await client.execute(b"GET", key(request, "3")) == b"3"


# --- Scripts ------------------------------------------------------------------------------

async def test_noscript_after_script_flush(
        client: RespClient, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    k = key(request, "n")
    assert (await client.evalsha(INCR_ECHO, (k,), ["a"]))[0] == 1
    admin.script_flush()
    assert (await client.evalsha(INCR_ECHO, StableKeys((k,)), ["b"]))[0] == 2
    admin.script_flush()
    batch = [ScriptCall(INCR_ECHO, (k,), [str(i)]) for i in range(3)]
    assert [n for n, _ in await client.execute_many(batch)] == [3, 4, 5]
    admin.script_flush()
    with pytest.raises(NoScriptError):  # a raw EVALSHA, not a ScriptCall: nothing to load
        await client.execute_many([(b"EVALSHA", INCR_ECHO.sha, 1, k, "x")])


async def test_store_survives_script_flush(server: RedisServer, admin: redis.Redis) -> None:
    store = redis_store(server.url)
    team = "t" + os.urandom(4).hex()
    assert (await store.admit(admit_args(team))).refused == ""
    admin.script_flush()
    result = await store.admit(admit_args(team))
    assert result.refused == "" and result.requests is not None
    assert result.requests.remaining == 998
    await store.close()


async def test_script_error_raises(client: RespClient) -> None:
    with pytest.raises(RespError) as err:
        await client.evalsha(Script("bad", b"return redis.call('NOSUCHCOMMAND')"), (), [])
    assert not isinstance(err.value, StoreUnavailable)
    assert await client.execute(b"PING") == b"PONG"


async def test_error_replies_raise(
        client: RespClient, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    k = key(request, "s")
    admin.set(k, "abc")
    with pytest.raises(RespError) as err:
        await client.execute(b"HGET", k, "f")
    assert err.value.code == "WRONGTYPE"
    with pytest.raises(RespError) as err:
        await client.execute(b"NOSUCHCOMMAND")
    assert err.value.code == "ERR"
    assert await client.execute(b"GET", k) == b"abc"  # still in step


# --- Outages ------------------------------------------------------------------------------

async def test_reconnects_after_client_kill(
        client: RespClient, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    k = key(request, "k")
    await client.execute(b"SET", k, b"v")
    before = connections_received(admin)
    kill_other_clients(admin)
    assert await client.execute(b"GET", k) == b"v"
    kill_other_clients(admin)
    assert await client.execute_many([(b"GET", k)] * 3) == [b"v"] * 3
    assert connections_received(admin) == before + 2


async def test_a_script_sent_once_is_not_resent_after_a_lost_connection(
        client: RespClient, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    """A command lost with its connection may have run; one that must not run twice
    (a lease's renewal) fails instead of being resent. Others are resent once."""
    k = key(request, "n")
    await client.evalsha(INCR_ECHO, (k,), ("warm",))  # connected, script loaded
    admin.client_pause(60_000, all=False)  # WRITE: the scripts below wait in Redis
    once = asyncio.ensure_future(client.evalsha(INCR_ECHO, (k,), ("once",), once=True))
    again = asyncio.ensure_future(client.evalsha(INCR_ECHO, (k,), ("again",)))
    for _ in range(1000):  # until they reached Redis, held there by the pause
        if any("b" in c["flags"] for c in admin.client_list(_type="normal")):
            break
        await asyncio.sleep(0.005)
    kill_other_clients(admin)  # the connection goes, both commands unanswered
    admin.client_unpause()
    with pytest.raises(StoreUnavailable):
        await once
    assert await again == [2, b"again"]  # resent on a new connection, ran once
    assert admin.get(k) == b"2"


async def test_timeout_fails_every_pending_and_recovers(
        server: RedisServer, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    """A stalled Redis (writes paused): the write, and the read queued behind it on the
    same connection, both fail; then the client works again, replies in step."""
    k, other = key(request, "k"), key(request, "other")
    admin.set(other, "theirs")
    client = RespClient(parse_url(server.url), timeout_s=0.2)
    assert await client.execute(b"GET", other) == b"theirs"
    admin.client_pause(60_000, all=False)  # WRITE: writes (and scripts) wait
    results = await asyncio.gather(client.execute(b"SET", k, b"mine"),
                                   client.execute(b"GET", other), return_exceptions=True)
    assert [type(r) for r in results] == [StoreUnavailable, StoreUnavailable]
    assert "no reply" in str(results[0])
    assert await client.execute(b"GET", other) == b"theirs"  # reads pass a WRITE pause
    admin.client_unpause()
    await client.execute(b"SET", k, b"mine")
    assert await asyncio.gather(client.execute(b"GET", k), client.execute(b"GET", other)) \
        == [b"mine", b"theirs"]
    await client.close()


async def test_server_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    store = redis_store(server.url, timeout_s=0.5)
    team = "t" + os.urandom(4).hex()
    await store.set("k", b"1")
    assert (await store.admit(admit_args(team))).refused == ""
    server.stop()
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    assert await store.ping() is False
    server = RedisServer(tmp_path, port=server.port)
    assert await store.get("k") is None  # a new, empty server
    assert (await store.admit(admit_args(team))).refused == ""  # scripts reloaded
    server.stop()
    server = RedisServer(tmp_path, port=server.port)  # no command in between: stale
    assert await store.ping() is True
    await store.close()
    server.stop()


async def test_connection_refused_is_store_unavailable() -> None:
    url = f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0"
    client = RespClient(parse_url(url), timeout_s=0.5)
    with pytest.raises(StoreUnavailable) as err:
        await client.execute(b"PING")
    assert str(err.value) == "redis unavailable (connection refused)"
    assert PASSWORD not in "".join(traceback.format_exception(err.value))
    assert PASSWORD not in repr(client)
    await client.close()


# --- Where to connect ---------------------------------------------------------------------

async def test_password_and_acl_user(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password=PASSWORD)
    try:
        store = redis_store(server.url)
        await store.set("k", b"v")
        assert await store.get("k") == b"v"
        await store.close()

        admin = redis.Redis.from_url(server.url)
        admin.acl_setuser("alice", enabled=True, passwords=[f"+{PASSWORD}-a"],
                          keys=["*"], commands=["+@all"])
        admin.close()
        alice = RespClient(parse_url(f"redis://alice:{PASSWORD}-a@127.0.0.1:{server.port}/2"))
        await alice.execute(b"SET", "k", b"db2")  # SELECT 2 on connect
        assert await alice.execute(b"GET", "k") == b"db2"
        assert await alice.execute(b"ACL", b"WHOAMI") == b"alice"
        await alice.close()

        for url in (f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0",
                    f"redis://alice:{PASSWORD}-x@127.0.0.1:{server.port}/0",
                    f"redis://127.0.0.1:{server.port}/0"):
            bad = redis_store(url)
            with pytest.raises(StoreUnavailable) as err:
                await bad.get("k")
            text = "".join(traceback.format_exception(err.value))
            assert PASSWORD not in text and "redis unavailable (" in text
            assert await bad.ping() is False
            await bad.close()
    finally:
        server.stop()


async def test_unix_socket(server: RedisServer, request: pytest.FixtureRequest) -> None:
    store = redis_store(f"unix://{server.socket}?db=1")
    await store.hset(key(request, "h"), "f", b"v")
    assert await store.hgetall(key(request, "h")) == {"f": b"v"}
    await store.close()
    db1 = redis.Redis.from_url(server.url.rpartition("/")[0] + "/1")
    assert db1.hget(key(request, "h"), "f") == b"v"
    db1.close()


async def test_tls(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    server = RedisServer(tmp_path, tls=files, password=PASSWORD)
    try:
        store = redis_store(server.url)
        await store.sadd("s", "a")
        assert await store.smembers("s") == {"a"}
        await store.close()
        # The system's CAs do not know the test CA: refused, and said so.
        untrusted = redis_store(server.url.partition("?")[0])
        with pytest.raises(StoreUnavailable) as err:
            await untrusted.get("k")
        assert "TLS" in str(err.value) and PASSWORD not in str(err.value)
        await untrusted.close()
    finally:
        server.stop()


async def test_store_methods_return_types(server: RedisServer,
                                          request: pytest.FixtureRequest) -> None:
    store = redis_store(server.url)
    k = key(request, "x")
    await store.set(k, b"v", ttl_s=60)
    assert await store.get(k) == b"v"
    await store.hset(k + "h", "f", b"1")
    assert await store.hget(k + "h", "f") == b"1"
    assert await store.hget(k + "h", "g") is None
    assert await store.hdel(k + "h", "f") is True
    assert await store.hdel(k + "h", "f") is False
    assert await store.hgetall(k + "h") == {}
    assert await store.smembers(k + "s") == set()
    assert await store.xrange(layout.events("nobody" + os.urandom(3).hex()), None, 5) == []
    assert await store.cache_lookup(k + "c", k + "c:lock", b"t", 5.0) == (None, True)
    await store.cache_renew([(k + "c:lock", b"t")], 5.0)
    await store.cache_renew([], 5.0)
    await store.settle_many([])
    await store.cache_finish([CacheWrite(k + "c", k + "c:lock", b"t", b"body", 60.0)])
    assert await store.cache_lookup(k + "c", k + "c:lock", b"t", 5.0) == (b"body", False)
    assert await store.ping() is True
    await store.close()


async def test_a_full_redis_is_an_outage_not_an_error(
        client: RespClient, admin: redis.Redis, request: pytest.FixtureRequest) -> None:
    """maxmemory reached with noeviction: writes are refused (OOM) until there is room,
    which callers handle with their outage policy."""
    k = key(request, "k")
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreUnavailable) as err:
            await client.execute(b"SET", k, b"v")
        assert str(err.value) == "redis unavailable (OOM)"
        assert await client.execute(b"GET", k) is None  # reads still work
    finally:
        admin.config_set("maxmemory", "0")
    assert await client.execute(b"SET", k, b"v") == b"OK"
