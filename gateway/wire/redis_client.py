"""The Redis connection for a `redis.url`: one node, a cluster or a Sentinel-managed master.

A `redis+sentinel://` URL says what it is. A plain one does not: managed offerings hand
out one endpoint whether or not it is a cluster. So the first command asks the node
(`INFO cluster`: `cluster_enabled:1`) and the connection becomes a `ClusterClient` or stays
a plain `RespClient`. Asking is deferred to first use, like connecting: a gateway starts
while Redis is down, and its outage policy applies until Redis answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gateway.store.base import StoreUnavailable
from gateway.wire.base import Arg, Command, Keys, RedisConnection, Script, Subscription
from gateway.wire.redis_url import RedisEndpoint, SentinelTarget, parse_target
from gateway.wire.resp import RespClient, RespError
from gateway.wire.resp_cluster import ClusterClient
from gateway.wire.resp_pubsub import Subscription as Subscribed
from gateway.wire.resp_sentinel import SentinelClient
from gateway.wire.shared import Shared

log = logging.getLogger("turnout.store")


def open_redis(url: str, *, timeout_s: float = 1.0) -> RedisConnection:
    """The connection for `url` (nothing is opened until it is used)."""
    target = parse_target(url)
    if isinstance(target, SentinelTarget):
        return SentinelClient(target, timeout_s=timeout_s)
    return RedisClient(target, timeout_s=timeout_s)


Client = RespClient | ClusterClient


class RedisClient:
    """A node, or the cluster it belongs to: found out at first use."""

    def __init__(self, seeds: Sequence[RedisEndpoint], *, timeout_s: float = 1.0) -> None:
        self._seeds = tuple(seeds)
        self._timeout = timeout_s
        self._client: Client | None = None
        self._finding = Shared(self._ask)  # concurrent first callers share one question

    def __repr__(self) -> str:
        return f"RedisClient({self._client or self._seeds[0]!r})"

    @property
    def client(self) -> Client | None:
        """What it turned out to be (None: not known yet)."""
        return self._client

    async def execute(self, *args: Arg) -> Any:
        return await (self._client or await self._find()).execute(*args)

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        return await (self._client or await self._find()).evalsha(script, keys, args,
                                                                  once=once)

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        return await (self._client or await self._find()).execute_many(commands)

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Subscription:
        if self._client is not None:
            return self._client.subscription(channel, on_message, on_down, on_up)

        async def locate() -> RedisEndpoint:  # where depends on what it turns out to be
            client = self._client or await self._find()
            return await client.placement(channel)[0]()

        def placed() -> RedisEndpoint | None:
            return self._client.placement(channel)[1]() if self._client is not None else None

        return Subscribed(locate, placed, channel, on_message, on_down, on_up,
                          timeout_s=self._timeout)

    async def close(self) -> None:
        await self._finding.settle(cancel=True)
        if self._client is not None:
            await self._client.close()

    async def _find(self) -> Client:
        client = self._client = await self._finding.join()
        return client

    async def _ask(self) -> Client:
        """The first seed that answers says whether it is a cluster node."""
        error: StoreUnavailable | None = None
        for seed in self._seeds:
            node = RespClient(replace(seed, db=0), timeout_s=self._timeout)  # a cluster has 0
            try:
                info = await node.execute(b"INFO", b"cluster")
            except RespError:  # INFO refused (renamed, ACL): take it as a plain node
                info = b""
            except StoreUnavailable as err:
                error = err
                await node.close()
                continue
            if b"cluster_enabled:1" not in info:
                if len(self._seeds) > 1:
                    log.warning("redis url names %d hosts but they are not a cluster: using"
                                " the first that answered", len(self._seeds))
                if seed.db:  # reconnected with its SELECT
                    await node.close()
                    return RespClient(seed, timeout_s=self._timeout)
                return node
            if seed.db:
                log.warning("redis cluster: only database 0 exists; the url's is ignored")
            log.info("redis: cluster mode")
            return ClusterClient([replace(s, db=0) for s in self._seeds],
                                 timeout_s=self._timeout, first=node)
        raise error or StoreUnavailable("redis unavailable")
