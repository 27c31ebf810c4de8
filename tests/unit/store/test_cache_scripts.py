"""The cache's store operations and the coalescing protocol, on both stores (a real
redis-server and in memory). Two `Coalescer`s on one store stand for two processes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.cache.coalesce import Coalescer, Found
from gateway.cache.entry import Entry
from gateway.canonical import Usage
from gateway.store import CacheWrite, Store, layout
from tests.support.stores import STORES, store_of

ENTRY = Entry(b'{"id":"x"}', Usage(1, 2), 3, 4.0)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = store_of(request, request.param)
    yield s
    await s.close()


def new_key() -> str:
    return layout.cache_entry("team:t", os.urandom(8).hex())  # the session's redis is shared


async def test_one_lookup_takes_the_lock_and_fill_releases_it(store: Store) -> None:
    k = new_key()
    lock = layout.cache_lock(k)
    got = await asyncio.gather(*(store.cache_lookup(k, lock, b"t%d" % i, 5) for i in range(20)))
    assert [locked for _, locked in got].count(True) == 1
    assert {entry for entry, _ in got} == {None}
    owner = b"t%d" % [locked for _, locked in got].index(True)
    await store.cache_finish([CacheWrite(k, lock, owner, b"v", 5)])
    assert await store.cache_lookup(k, lock, b"other", 5) == (b"v", False)
    assert await store.get(lock) is None


async def test_only_the_holder_releases_or_renews(store: Store) -> None:
    k = new_key()
    lock = layout.cache_lock(k)
    assert await store.cache_lookup(k, lock, b"mine", 0.3) == (None, True)
    await store.cache_finish([CacheWrite(k, lock, b"theirs", None, 0)])
    await store.cache_renew([(lock, b"theirs")], 60)
    assert await store.cache_lookup(k, lock, b"theirs", 5) == (None, False)
    await store.cache_renew([(lock, b"mine")], 60)
    await asyncio.sleep(0.4)  # past the first TTL: the renewal kept it
    assert await store.cache_lookup(k, lock, b"theirs", 5) == (None, False)
    await store.cache_finish([CacheWrite(k, lock, b"mine", None, 0)])
    assert await store.cache_lookup(k, lock, b"theirs", 5) == (None, True)
    # A fill by someone who no longer holds the lock stores, and leaves the holder's lock.
    await store.cache_finish([CacheWrite(k, lock, b"mine", b"v", 5)])
    assert await store.get(lock) == b"theirs"
    assert await store.cache_lookup(k, lock, b"x", 0) == (b"v", False)


async def test_a_lookup_without_a_lock_ttl_never_locks(store: Store) -> None:
    k = new_key()
    assert await store.cache_lookup(k, layout.cache_lock(k), b"t", 0) == (None, False)
    assert await store.get(layout.cache_lock(k)) is None


async def test_entries_expire(store: Store) -> None:
    k = new_key()
    await store.cache_finish([CacheWrite(k, layout.cache_lock(k), b"", b"v", 0.1)])
    assert (await store.cache_lookup(k, layout.cache_lock(k), b"t", 0))[0] == b"v"
    await asyncio.sleep(0.2)  # waiting out the TTL is the behaviour under test
    assert (await store.cache_lookup(k, layout.cache_lock(k), b"t", 0))[0] is None


def leaders(found: list[Found]) -> list[Found]:
    return [f for f in found if f.flight is not None]


class Counting:
    """The store, counting lookups: to know when waiters are waiting, without sleeping."""

    def __init__(self, store: Store, until: int) -> None:
        self.store = store
        self.lookups = 0
        self.until = until
        self.reached = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def cache_lookup(self, *args: Any) -> tuple[bytes | None, bool]:
        self.lookups += 1
        if self.lookups >= self.until:
            self.reached.set()
        return await self.store.cache_lookup(*args)


async def test_concurrent_misses_in_two_processes_make_one_leader(store: Store) -> None:
    k, deadline = new_key(), asyncio.get_running_loop().time() + 10
    # Three lookups: the leader's, and the other process's first probe and first poll.
    counting = Counting(store, until=3)
    a, b = Coalescer(counting, 5, 30), Coalescer(counting, 5, 30)
    finds = [asyncio.create_task(c.find(k, deadline)) for c in (a, b) for _ in range(20)]
    await counting.reached.wait()  # by then all 40 are leading or waiting
    done, _ = await asyncio.wait(finds, return_when=asyncio.FIRST_COMPLETED)
    [lead] = done  # the one leader: the others wait for it
    leader = lead.result()
    assert leader.flight is not None and leader.entry is None
    owner = a if finds.index(lead) < 20 else b
    await owner.finish([(leader.flight, ENTRY, leader.flight.write(ENTRY.encode(), 5))])
    rest = await asyncio.gather(*(t for t in finds if t is not lead))
    assert len(rest) == 39 and all(f.entry == ENTRY and f.waited for f in rest)
    assert leaders(rest) == []
    later = await a.find(k, deadline)
    assert later.entry == ENTRY and not later.waited  # from the store now
    a.close()
    b.close()


async def test_a_failed_leader_hands_over_to_exactly_one_waiter(store: Store) -> None:
    k, deadline = new_key(), asyncio.get_running_loop().time() + 10
    counting = Counting(store, until=2)  # b's poller saw the lock held twice: all wait
    a, b = Coalescer(store, 5, 30), Coalescer(counting, 5, 30)
    first = await a.find(k, deadline)
    assert first.flight is not None
    waiting = [asyncio.create_task(c.find(k, deadline)) for c in (a, b) for _ in range(10)]
    await counting.reached.wait()
    assert not any(t.done() for t in waiting)
    # The upstream call failed:
    await a.finish([(first.flight, None, first.flight.write(None, 0))])
    done, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    [second] = done
    successor = second.result()
    assert successor.flight is not None and successor.waited
    owner = a if waiting.index(second) < 10 else b
    ended = successor.flight
    await owner.finish([(ended, ENTRY, ended.write(ENTRY.encode(), 5))])
    rest = await asyncio.gather(*pending)
    assert len(rest) == 19 and all(f.entry == ENTRY for f in rest) and leaders(rest) == []
    a.close()
    b.close()


async def test_a_dead_leaders_lock_lapses_and_a_waiter_takes_over(store: Store) -> None:
    k, deadline = new_key(), asyncio.get_running_loop().time() + 10
    dead, alive = Coalescer(store, 0.3, 30), Coalescer(store, 0.3, 30)
    assert (await dead.find(k, deadline)).flight is not None
    dead.close()  # its process died: no renewal, no release
    took = await alive.find(k, deadline)  # polls until the lock lapses (0.3 s)
    assert took.flight is not None and took.waited
    alive.close()


async def test_a_live_leader_keeps_its_lock_past_the_ttl(store: Store) -> None:
    k, deadline = new_key(), asyncio.get_running_loop().time() + 10
    a, b = Coalescer(store, 0.3, 30), Coalescer(store, 0.3, 30)
    first = await a.find(k, deadline)
    assert first.flight is not None
    waiter = asyncio.create_task(b.find(k, deadline))
    await asyncio.sleep(1.0)  # over three lock TTLs: renewed every 0.1 s
    assert not waiter.done()
    await a.finish([(first.flight, ENTRY, first.flight.write(ENTRY.encode(), 5))])
    assert (await waiter).entry == ENTRY
    a.close()
    b.close()


async def test_waiting_gives_up_at_the_deadline(store: Store) -> None:
    k = new_key()
    a, b = Coalescer(store, 5, 30), Coalescer(store, 5, 30)
    now = asyncio.get_running_loop().time()
    assert (await a.find(k, now + 10)).flight is not None
    with pytest.raises(TimeoutError):
        await b.find(k, now + 0.1)
    a.close()
    b.close()


async def test_a_waiter_here_gives_up_or_leaves_alone(store: Store) -> None:
    # Waiters in the leader's own process: one past its deadline raises TimeoutError, one
    # cancelled (its client left) stops; neither ends the flight the others wait on.
    k, loop = new_key(), asyncio.get_running_loop()
    a = Coalescer(store, 5, 30)
    lead = await a.find(k, loop.time() + 10)
    assert lead.flight is not None
    hasty = asyncio.create_task(a.find(k, loop.time() + 0.05))
    leaving = asyncio.create_task(a.find(k, loop.time() + 10))
    patient = asyncio.create_task(a.find(k, loop.time() + 10))
    await asyncio.sleep(0.1)
    leaving.cancel()
    with pytest.raises(TimeoutError):
        await hasty
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert not patient.done()
    await a.finish([(lead.flight, ENTRY, lead.flight.write(ENTRY.encode(), 5))])
    found = await patient
    assert found.entry == ENTRY and found.waited
    a.close()


async def test_a_leader_that_never_finishes_is_dropped_after_max_hold(store: Store) -> None:
    k, deadline = new_key(), asyncio.get_running_loop().time() + 10
    c = Coalescer(store, 0.3, 0.4)  # a bug left a leader unfinished: it leads 0.4 s at most
    assert (await c.find(k, deadline)).flight is not None
    waiter = await c.find(k, deadline)  # waits for it, then for its lock to lapse
    assert waiter.flight is not None and waiter.waited
    c.close()
