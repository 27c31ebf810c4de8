"""CPU per Redis call of the store's clients: ours (gateway/wire) against redis-py's, on one
node, on a Redis Cluster and behind Sentinel. Starts its own redis-servers (a node, a 3+3
cluster, a master with a replica and three sentinels) on free ports.

    .venv/bin/python scripts/bench_redis_clients.py [--calls 10000] [--rounds 3]

Each measurement is `calls` admissions (`RedisStore.admit`: one EVALSHA of the admission
script, 4 keys, 14 arguments) and `calls` raw EVALSHAs of a one-key script, sent by
`concurrency` tasks at a time; the figure is this process's CPU time (user + system) per
call, the least of `rounds` runs (the servers share the machine; the client's CPU is what
the gateway would pay).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.store import AdmitArgs, RedisStore
from gateway.wire.base import Arg, Command, Keys, RedisConnection, Script, Subscription
from gateway.wire.redis_client import open_redis
from gateway.wire.redis_url import parse_url
from gateway.wire.resp import RespClient
from policies.ratelimits import Limits
from tests.support.procs import RedisCluster, RedisSentinel, RedisServer, command

ONE_KEY = Script("bench", b"return redis.call('INCR', KEYS[1])")


class RedisPy:
    """redis-py behind our `RedisConnection` Protocol: what the store would run on."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster) -> None:
        self._r = client

    async def execute(self, *args: Arg) -> Any:
        return await self._r.execute_command(*args)

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        try:
            return await self._r.evalsha(script.sha.decode(), len(keys), *keys, *args)
        except NoScriptError:
            await self._r.script_load(script.source)
            return await self._r.evalsha(script.sha.decode(), len(keys), *keys, *args)

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        raise NotImplementedError

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Subscription:
        raise NotImplementedError

    async def close(self) -> None:
        await self._r.aclose()


def admit_args(team: str) -> AdmitArgs:
    return AdmitArgs(team=team, key_id="k", reservation=os.urandom(8).hex(), check_key=False,
                     key_limits=Limits(rpm=10**9, tpm=10**12), team_limits=Limits(),
                     tokens=10, team_budget=None, key_budget=None, cost_nanos=0,
                     ttl_ms=60_000)


async def cpu_per_call(call: Callable[[int], Any], calls: int, concurrency: int) -> float:
    """µs of this process's CPU per call."""
    async def worker(w: int) -> None:
        for i in range(w, calls, concurrency):
            await call(i)

    await asyncio.gather(*(call(i) for i in range(concurrency)))  # connected, loaded
    started = time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return (time.process_time() - started) / calls * 1e6


async def measure(conn: RedisConnection, calls: int, concurrency: int) -> tuple[float, float]:
    store = RedisStore(conn)
    team = "bench" + os.urandom(3).hex()
    admit = await cpu_per_call(lambda i: store.admit(admit_args(team)), calls, concurrency)
    raw = await cpu_per_call(lambda i: conn.evalsha(ONE_KEY, (f"bench:{i % 64}",), ()),
                             calls, concurrency)
    await conn.close()
    return admit, raw


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    node, cluster, sentinel = RedisServer(workdir), RedisCluster(workdir), RedisSentinel(workdir)
    sentinels = [("127.0.0.1", s.port) for s in sentinel.sentinels]
    try:
        for n in cluster.nodes:  # redis-py's cluster client does not load scripts per node
            command(n.port, "SCRIPT", "LOAD", ONE_KEY.source)
        clients: dict[str, Callable[[], RedisConnection]] = {
            "ours, one node (RespClient)": lambda: RespClient(parse_url(node.url)),
            "ours, one node (open_redis)": lambda: open_redis(node.url),
            "ours, cluster (open_redis)": lambda: open_redis(cluster.url),
            "redis-py, one node": lambda: RedisPy(aioredis.Redis.from_url(node.url)),
            "redis-py, cluster": lambda: RedisPy(aioredis.RedisCluster.from_url(cluster.url)),
            "ours, sentinel (open_redis)": lambda: open_redis(sentinel.url),
            "redis-py, sentinel": lambda: RedisPy(Sentinel(sentinels).master_for("mymaster")),
        }
        print(f"{opts.calls} calls, least of {opts.rounds} rounds; CPU µs per call")
        print(f"{'client':32} {'c':>3} {'admit':>8} {'evalsha':>8}")
        for concurrency in (1, 16):
            for name, make in clients.items():
                runs = [uvloop.run(measure(make(), opts.calls, concurrency))
                        for _ in range(opts.rounds)]
                admit = min(r[0] for r in runs)
                raw = min(r[1] for r in runs)
                print(f"{name:32} {concurrency:>3} {admit:>8.1f} {raw:>8.1f}", flush=True)
    finally:
        node.stop()
        cluster.stop()
        sentinel.stop()


if __name__ == "__main__":
    main()
