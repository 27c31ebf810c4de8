"""Invalidations: every gateway process learns at once that a key was revoked or that a
team's or key's policy changed.

Processes keep what they learned of keys: principals cached for `auth.cache_ttl_s`, and
leases (`lease_holder.py`) that admit requests without asking the store. The process
making a change publishes it on one Redis channel; every process (itself included) drops
what it holds for that team or key, gives back what its leases held, then acknowledges.
A revocation waits until every process that received it has acknowledged (at most
ACK_TIMEOUT_S; one that has not acknowledged by then cannot renew its lease of a revoked
key, so stops within MAX_AGE_S anyway), so when it returns, no process admits the key any
more. A process that is not subscribed may miss changes: it holds no leases then
(`lease_holder.py`), admission in the store checks each request's key itself, and what it
cached is forgotten when it is subscribed again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from gateway.store import RedisStore, StoreUnavailable

log = logging.getLogger("turnout.invalidation")

CHANNEL = "turnout:invalidations"
ACK_TIMEOUT_S = 2.0
_ACK_TTL_MS = 60_000
_POLL_S = 0.002


@dataclass(frozen=True, slots=True)
class Change:
    team: str
    key_id: str | None = None  # None: the team's policy (every key of it)
    key_hash: str | None = None  # a key's hash: drops a cached "no such key" too
    leases_only: bool = False  # a recall: nothing changed, but leases must go back now


class Listener(Protocol):
    """What a process holds of keys and teams, told of changes."""

    def changed(self, change: Change) -> Awaitable[object] | None:
        """Drop what is held for it at once; what is returned (if anything) is awaited
        before the change is acknowledged."""
        ...

    def down(self) -> None:
        """Changes may be missed from now on."""
        ...

    def up(self) -> None:
        """Changes are heard (again): anything kept from before may be stale."""
        ...


class Announcer(Protocol):
    async def announce(self, change: Change, *, wait: bool = True) -> None: ...


class LocalInvalidations:
    """One process, no shared store: a change only needs applying here."""

    def __init__(self, listeners: Sequence[Listener]) -> None:
        self._listeners = tuple(listeners)

    async def announce(self, change: Change, *, wait: bool = True) -> None:
        await apply(self._listeners, change)


async def apply(listeners: Sequence[Listener], change: Change) -> None:
    # Every listener drops what it holds first, at once; then their wrap-ups are awaited.
    pending = [w for listener in listeners if (w := listener.changed(change)) is not None]
    for work in pending:
        await work


class Invalidations:
    """Changes over Redis pub/sub, heard by every process."""

    def __init__(self, store: RedisStore, listeners: Sequence[Listener]) -> None:
        self._store = store
        self._listeners = tuple(listeners)
        self._subscription = store.subscription(CHANNEL, self._received, self._down,
                                                self._up)
        self._acks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    @property
    def live(self) -> bool:
        return self._subscription.live

    async def start(self) -> None:
        await self._subscription.start()

    async def close(self) -> None:
        await self._subscription.close()
        if self._acks:
            await asyncio.wait(list(self._acks), timeout=1.0)

    async def announce(self, change: Change, *, wait: bool = True) -> None:
        """Apply `change` here, tell every process, and (`wait`) return once each that
        heard it has acknowledged."""
        await apply(self._listeners, change)
        ack = f"turnout:acks:{os.urandom(8).hex()}"
        message = orjson.dumps({"team": change.team, "key": change.key_id,
                                "hash": change.key_hash, "recall": change.leases_only,
                                "ack": ack if wait else None})
        heard = await self._store.publish(CHANNEL, message)
        if not wait:
            return
        deadline = time.monotonic() + ACK_TIMEOUT_S
        acked = 0
        while (acked := await self._store.count(ack)) < heard:
            if time.monotonic() >= deadline:
                log.warning("invalidation of team %s: %d of %d processes acknowledged in %gs",
                            change.team, acked, heard, ACK_TIMEOUT_S)
                return
            await asyncio.sleep(_POLL_S)

    def _received(self, data: bytes) -> None:
        msg = orjson.loads(data)
        change = Change(msg["team"], msg.get("key"), msg.get("hash"), bool(msg.get("recall")))
        task = self._loop.create_task(self._handle(change, msg.get("ack")))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _handle(self, change: Change, ack: str | None) -> None:
        try:
            await apply(self._listeners, change)
            if ack:
                await self._store.ack(ack, _ACK_TTL_MS)
        except StoreUnavailable as err:
            log.warning("invalidation of team %s not acknowledged: %s", change.team, err)

    def _down(self) -> None:
        for listener in self._listeners:
            listener.down()

    def _up(self) -> None:
        for listener in self._listeners:
            listener.up()
