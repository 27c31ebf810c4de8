"""Redis behind Sentinel: our RESP client, connected wherever the sentinels say the master is.

Following the Sentinel client guidelines (redis.io, "Sentinel clients"), as redis-py's
`SentinelConnectionPool` does:
- every new connection first asks the sentinels in turn (`SENTINEL
  get-master-addr-by-name`), the first that answers moving to the front, then checks with
  `ROLE` that the node it reached is a master (a demoted one may not know yet);
- a lost connection is made again the same way, so after a failover the next command
  goes to the new master (one resend, as for any lost connection);
- a READONLY reply (the master we talk to was demoted and is a replica now: the write did
  not run) drops the connection and sends the command once more, to the master the
  sentinels name now;
- the sentinels' `+switch-master` announcement (subscribed on one of them) drops the
  connection at once, and the next goes to the master it names (a sentinel asked then may
  not know yet): after a failover the old master may go on taking writes, to be lost,
  until the sentinels get round to demoting it (10 s after `SENTINEL FAILOVER` here);
- a subscription goes where the commands go, and follows them (`placement`), so that
  PUBLISH counts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from gateway.store.base import StoreUnavailable
from gateway.wire.base import Arg, Command, Keys, Script
from gateway.wire.redis_url import RedisEndpoint, SentinelTarget
from gateway.wire.resp import NotMaster, RespClient, RespError, Unreached, _Connection, checked
from gateway.wire.resp_codec import encode
from gateway.wire.resp_pubsub import Locate, Placed, Subscription

log = logging.getLogger("turnout.store")
_ROLE = encode((b"ROLE",))
_SWITCHED = "+switch-master"  # "<service> <old host> <old port> <new host> <new port>"


class SentinelClient(RespClient):
    def __init__(self, target: SentinelTarget, *, timeout_s: float = 1.0) -> None:
        super().__init__(target.master, timeout_s=timeout_s)
        self._service = target.service.encode()
        self._sentinels = [RespClient(s, timeout_s=timeout_s) for s in target.sentinels]
        self._master: RedisEndpoint | None = None  # where the last connection went
        self._announced: RedisEndpoint | None = None  # by +switch-master: connect there
        self._watch: Subscription | None = None  # +switch-master, from one sentinel
        self._watching: asyncio.Task[None] | None = None
        self._next_sentinel = 0

    def __repr__(self) -> str:
        return f"SentinelClient({self._service.decode()!r}, {len(self._sentinels)} sentinels)"

    async def execute(self, *args: Arg) -> Any:
        try:
            return await super().execute(*args)
        except NotMaster:
            self._drop()
            return await super().execute(*args)

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        try:
            return await super().evalsha(script, keys, args, once=once)
        except NotMaster:  # it did not run: safe to send again, `once` or not
            self._drop()
            return await super().evalsha(script, keys, args, once=once)

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        replies = await self.send_raw(commands)
        if any(_read_only(reply) for reply in replies):
            # Only the commands refused by a replica are sent again: the others ran.
            self._drop()
            again = [i for i, reply in enumerate(replies) if _read_only(reply)]
            for i, reply in zip(again, await self.send_raw([commands[i] for i in again]),
                                strict=True):
                replies[i] = reply
        return [checked(reply) for reply in replies]

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
        if self._watch is not None:
            await self._watch.close()
        await super().close()
        for sentinel in self._sentinels:
            await sentinel.close()

    def _start_watching(self) -> None:
        self._watch = Subscription(self._a_sentinel, lambda: None, _SWITCHED, self._switched,
                                   lambda: None, lambda: None, timeout_s=self._timeout)
        # In the background: the first connection does not wait for it.
        self._watching = asyncio.get_running_loop().create_task(self._watch.start())

    async def _a_sentinel(self) -> RedisEndpoint:
        """Each attempt to subscribe tries the next sentinel."""
        self._next_sentinel += 1
        return self._sentinels[self._next_sentinel % len(self._sentinels)].endpoint

    def _switched(self, message: bytes) -> None:
        parts = message.decode(errors="replace").split()
        if len(parts) == 5 and parts[0].encode() == self._service and parts[4].isdigit():
            log.warning("redis sentinel: %s failed over; reconnecting to the new master",
                        parts[0])
            self._announced = self.endpoint.at(parts[3], int(parts[4]))
            self._drop()

    def placement(self, channel: str) -> tuple[Locate, Placed]:
        async def locate() -> RedisEndpoint:  # where the commands (and PUBLISH) go
            return self._master or await self._resolve()

        return locate, self._placed

    async def _target(self) -> RedisEndpoint:
        """Where the next connection goes: the master +switch-master named, else the one
        the sentinels name (either checked with ROLE once connected)."""
        if self._watch is None:
            self._start_watching()
        master, self._announced = self._announced, None
        self._master = master or await self._resolve()
        return self._master

    async def _resolve(self) -> RedisEndpoint:
        for i, sentinel in enumerate(self._sentinels):
            try:
                reply = await sentinel.execute(b"SENTINEL", b"get-master-addr-by-name",
                                               self._service)
            except (StoreUnavailable, RespError):
                continue
            if not reply:  # this sentinel does not know the service
                continue
            if i:  # the one that answered is asked first from now on
                self._sentinels.insert(0, self._sentinels.pop(i))
            return self.endpoint.at(reply[0].decode(), int(reply[1]))
        raise Unreached("redis unavailable (no sentinel names the master)")

    async def _verify(self, conn: _Connection) -> None:
        role = await conn.send(_ROLE)
        if not isinstance(role, list) or not role or role[0] != b"master":
            raise Unreached("redis unavailable (the node the sentinels named is not master)")

    def _placed(self) -> RedisEndpoint | None:
        return self._master


def _read_only(reply: Any) -> bool:
    return isinstance(reply, Exception) and str(reply).startswith("READONLY")
