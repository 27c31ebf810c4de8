"""Coalescing: concurrent identical misses make one upstream call, across workers and
replicas, through the store.

Protocol, per cache key:
- A lookup is one store round trip (`Store.cache_lookup`): the entry, or else `SET lock
  NX PX lock_ttl` with a fresh token. Whoever takes the lock leads: it goes upstream.
- The leader's lock is renewed every lock_ttl/3 while it works (one pipelined round trip
  per process for all its locks), so a long generation keeps it, and a leader that dies
  loses it within lock_ttl.
- The leader ends with one round trip: the entry stored and its lock dropped together,
  or, when it failed, only the lock dropped (`cache_finish`: the misses that ended in
  one loop turn together).
- Everyone else polls the same lookup with a jittered backoff (5 ms, doubling to 50 ms),
  until the entry is there, or the lock is gone (the leader failed, or died and its lock
  expired): then the lookup takes the lock for one of them, which leads from there.
- Within a process only one request per key talks to the store at a time (a `Flight`);
  the others await it. A leader in the process hands its answer to them the moment it
  has it; a poller shares what it finds.

Why polling and not pub/sub: the lookup that polls is the same script that takes over
from a failed leader, so there is no notification to lose (a subscriber that reconnects,
or subscribes just after the publish, waits for nothing), no subscriber connection and
task per process, and it works unchanged on the in-memory store and on Redis Cluster. The
cost is bounded: a waiter in another process sees the answer at most 50 ms late (answers
that take seconds to generate hardly notice), and each process polls a key at most 20
times a second whatever its number of waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.cache.entry import Entry
from gateway.store import CacheWrite, Store, StoreUnavailable, layout

_POLL_FIRST_S = 0.005
_POLL_MAX_S = 0.05


class Flight:
    """This process's one request for a key: leading, or polling for another's answer.
    `done` resolves to the answer, or to None when there is none (the caller retries)."""

    __slots__ = ("done", "key", "lock", "token", "until")

    def __init__(self, key: str, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[Entry | None] = loop.create_future()
        self.key = key
        self.lock = layout.cache_lock(key)
        self.token = b""
        self.until = 0.0  # leading: renewed until then (loop time), at the most

    def write(self, value: bytes | None, ttl_s: float) -> CacheWrite:
        """The leader's end in the store: `value` stored (None: none), the lock dropped."""
        return CacheWrite(self.key, self.lock, self.token, value, ttl_s)


# A miss that ended: its flight when it led one, its answer (None: it failed), its write.
Ended = tuple[Flight | None, Entry | None, CacheWrite]


@dataclass(slots=True)
class Found:
    entry: Entry | None  # an answer (None: the caller goes upstream)
    flight: Flight | None  # the caller leads: it must `finish` this flight
    waited: bool  # the answer, or the lead, came after waiting on another request


class Coalescer:
    def __init__(self, store: Store, lock_ttl_s: float, max_hold_s: float) -> None:
        self.store = store
        self.lock_ttl_s = lock_ttl_s
        # Past this a leader that never finished (a bug) stops holding its key hostage:
        # its lock lapses and its local waiters take over. Waiters have given up by then.
        self.max_hold_s = max_hold_s
        self._flights: dict[str, Flight] = {}
        self._held: dict[str, Flight] = {}  # lock → its leader's flight, renewed while held
        self._renewer: asyncio.Task[None] | None = None
        # Lock tokens: this process's random prefix (drawn once: a system call each) and a
        # count, unique to each lookup.
        prefix = os.urandom(8).hex()
        self._tokens = (f"{prefix}:{n}".encode() for n in itertools.count())
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, asked for once: on Python 3.11 each ask is a getpid()."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def find(self, key: str, deadline: float) -> Found:
        """The entry, or the lead; raises TimeoutError once `deadline` (loop time) passes
        while waiting on another request, StoreUnavailable when the store is down."""
        waited = False
        while True:
            flight = self._flights.get(key)
            if flight is None:
                break
            waited = True
            entry = await _wait(self.loop, flight.done, deadline)
            if entry is not None:
                return Found(entry, None, True)
            # Its leader failed: loop, and the first of us to get here takes over.
        flight = self._flights[key] = Flight(key, self.loop)
        try:
            found = await self._probe(key, flight, deadline)
        except BaseException:
            self._land(flight, None)
            raise
        if found.flight is None:
            self._land(flight, found.entry)
        found.waited = found.waited or waited
        return found

    async def _probe(self, key: str, flight: Flight, deadline: float) -> Found:
        loop = self.loop
        token = next(self._tokens)
        raw, locked = await self.store.cache_lookup(key, flight.lock, token, self.lock_ttl_s)
        delay, polled = _POLL_FIRST_S, False
        while raw is None and not locked:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            await asyncio.sleep(min(delay * random.uniform(0.75, 1.25), remaining))
            delay, polled = min(delay * 2, _POLL_MAX_S), True
            raw, locked = await self.store.cache_lookup(key, flight.lock, token,
                                                        self.lock_ttl_s)
        if raw is not None:
            return Found(Entry.decode(raw), None, polled)
        flight.token = token
        self._hold(flight)
        return Found(None, flight, polled)

    async def finish(self, ended: Sequence[Ended]) -> None:
        """Misses are done: waiters here get each answer at once; the store gets the
        values and loses the locks in one round trip."""
        for flight, entry, _ in ended:
            if flight is not None and entry is not None and not flight.done.done():
                flight.done.set_result(entry)
        try:
            await self.store.cache_finish([write for _, _, write in ended])
        finally:
            # Kept until here so requests arriving meanwhile get the answer from memory.
            for flight, entry, _ in ended:
                if flight is not None:
                    self._held.pop(flight.lock, None)
                    self._land(flight, entry)

    def _land(self, flight: Flight, entry: Entry | None) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if not flight.done.done():
            flight.done.set_result(entry)

    def _hold(self, flight: Flight) -> None:
        loop = self.loop
        flight.until = loop.time() + self.max_hold_s
        self._held[flight.lock] = flight
        if self._renewer is None or self._renewer.done():
            self._renewer = loop.create_task(self._renew())

    async def _renew(self) -> None:
        loop = asyncio.get_running_loop()
        while self._held:
            await asyncio.sleep(self.lock_ttl_s / 3)
            now = loop.time()
            for stale in [f for f in self._held.values() if f.until <= now]:
                del self._held[stale.lock]
                self._land(stale, None)
            # Failing that, the locks may lapse and a waiter take over: a second call, no harm.
            with contextlib.suppress(StoreUnavailable):
                if self._held:
                    await self.store.cache_renew(
                        [(f.lock, f.token) for f in self._held.values()], self.lock_ttl_s)

    def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()


async def _wait(loop: asyncio.AbstractEventLoop, done: asyncio.Future[Entry | None],
                deadline: float) -> Entry | None:
    """`done`'s answer; TimeoutError once `deadline` (loop time) passes. As
    wait_for(shield(done)) does, at a third of its cost (every coalesced waiter pays it):
    one waiter giving up (or its client leaving) must not cancel the others' `done`, so
    this waits on a future of its own, woken by `done` or by the deadline's timer."""
    if deadline - loop.time() <= 0:
        raise TimeoutError
    if not done.done():
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        done.add_done_callback(wake)
        timer = loop.call_at(deadline, wake)
        try:
            await woken
        finally:
            timer.cancel()
            done.remove_done_callback(wake)
        if not done.done():
            raise TimeoutError
    return done.result()
