"""Leases in one process: the bookkeeping (policies/leases.py), and the lease holder
(gateway/accounting/lease_holder.py) with its invalidations against a real redis-server:
granted in the background, used on the hot path, dropped and given back when a change is
announced or the subscription is lost."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.accounting.invalidation import Change, Invalidations
from gateway.accounting.lease_holder import LeaseHolder
from gateway.store import layout
from policies.budgets import Budget
from policies.keys import Principal
from policies.leases import MAX_AGE_S, MIN_REQUESTS, Lease, Policy
from policies.ratelimits import Limits, LimitState
from tests.support.procs import RedisServer
from tests.support.stores import redis_store

# -- the bookkeeping -----------------------------------------------------------------------


def bare_lease(**free: float) -> Lease:
    p = Principal(team="t", key_id="k")
    lease = Lease("lease:x:0", p, Policy.of(p), tokens_per=10.0, nanos_per=100.0)
    lease.wanted(now=100.0, renewal=True)  # asked, then granted
    lease.granted((free.get("requests", 8), free.get("tokens", 80), free.get("nanos", 800)),
                  LimitState(1000, 500, 30_000.0), None, now=100.0, renewal=True)
    return lease


def test_take_admits_while_every_dimension_has_room() -> None:
    lease = bare_lease(requests=2, tokens=15, nanos=math.inf)
    assert lease.take(10, 10**9, now=100.1)  # no budget bound: any cost
    assert not lease.take(10, 0, now=100.2)  # 5 tokens left
    assert lease.take(5, 0, now=100.3)
    assert not lease.take(0, 0, now=100.4)  # no request left
    assert (lease.requests, lease.tokens, lease.taken, lease.missed) == (0, 0, 2, 2)
    assert lease.hand_back() == (0, 0, 0)


def test_a_share_is_not_used_after_max_age() -> None:
    lease = bare_lease(requests=8)  # granted at 100.0
    assert lease.take(10, 100, now=100.0 + MAX_AGE_S)
    assert not lease.take(10, 100, now=100.01 + MAX_AGE_S)


def test_low_at_half_the_target_and_the_target_follows_demand() -> None:
    lease = bare_lease(requests=MIN_REQUESTS, tokens=math.inf, nanos=math.inf)
    assert not lease.low
    lease.take(10, 100, now=100.1)
    lease.take(10, 100, now=100.1)
    assert not lease.low  # 2 of a target of 4 left: not below half
    lease.take(10, 100, now=100.1)
    assert lease.low
    # 3 requests in 0.1 s is 30/s: a quarter second of that is 8 requests. A renewal asks
    # for all of it, a top-up for what the lease lacks (1 request is left: 7; tokens and
    # nanos have no bound here, so are never short).
    least = (MIN_REQUESTS, 40, 400)
    assert lease.wanted(now=100.1, renewal=True) == ((8, 80, 800), least)
    assert lease.wanted(now=100.1, renewal=False) == ((7, 0, 0), (MIN_REQUESTS, 0, 0))
    # Requests that found it empty: a burst. The target doubles (or grows to twice the
    # demand seen, were that more: 7 here).
    lease.granted((1, 0, 0), None, None, now=100.2, renewal=False)  # added to what it had
    assert lease.requests == 2
    for _ in range(7):
        lease.take(10, 100, now=100.3)
    assert lease.wanted(now=100.3, renewal=True)[0][0] == 2 * 8


def test_a_target_shrinks_at_renewals_only_while_the_lease_never_runs_low() -> None:
    lease = bare_lease(requests=100, tokens=math.inf, nanos=math.inf)
    lease.target = 100
    lease.wanted(now=100.5, renewal=True)  # half of it was never touched
    assert 90 <= lease.target < 100
    lease.dipped = True  # it ran below half since: the target was needed
    kept = lease.target
    lease.wanted(now=101.0, renewal=True)
    assert lease.target == kept and not lease.dipped


def test_requests_missed_while_an_ask_is_answered_count_towards_the_next() -> None:
    lease = bare_lease(requests=0, tokens=math.inf, nanos=math.inf)
    lease.wanted(now=100.1, renewal=False)  # the ask goes out
    for _ in range(6):  # a burst finds it empty meanwhile
        assert not lease.take(10, 100, now=100.1)
    lease.granted((4, 0, 0), None, None, now=100.2, renewal=False)  # the answer
    # twice the burst (more than twice the target of 4), less what it holds
    assert lease.wanted(now=100.2, renewal=False)[0][0] == 2 * 6 - 4


def test_headers_count_what_the_lease_still_holds() -> None:
    lease = bare_lease(requests=8)
    lease.take(10, 100, now=100.5)
    rpm, tpm = lease.states(now=101.0, tokens=10)
    assert rpm == LimitState(1000, 500 + 7, 29_000.0) and tpm is None
    lease.granted((990, 0, 0), LimitState(1000, 995, 500.0), None, now=101.5, renewal=False)
    assert lease.states(now=101.75, tokens=10)[0] == LimitState(1000, 999, 250.0)  # capped


def test_sizes_are_learnt_from_misses_too_and_never_from_cache_hits() -> None:
    lease = bare_lease(requests=8, tokens=15, nanos=math.inf)  # 10 tokens a request so far
    assert not lease.take(100, 0, now=100.1)  # too big for what is free: still its size
    assert lease.tokens_per == pytest.approx(19.0)
    assert lease.take(0, 0, now=100.2)  # a cache hit: admitted, says nothing of sizes
    assert lease.tokens_per == pytest.approx(19.0) and lease.requests == 7


def test_a_top_up_asks_only_for_the_dimensions_short_of_the_target() -> None:
    lease = bare_lease(requests=8, tokens=10, nanos=800)  # target: 4 requests, 40, 400
    assert lease.wanted(now=100.1, renewal=False) == ((0, 40, 0), (0, 40, 0))


def test_hand_back_empties_it_and_counts_only_bounded_dimensions() -> None:
    lease = bare_lease(requests=3, tokens=math.inf, nanos=7.0)
    assert lease.hand_back() == (3, 0, 7)
    assert (lease.requests, lease.tokens, lease.nanos) == (0, 0, 0)


# -- the manager, with real Redis ----------------------------------------------------------

KEY = "k1"


async def until(check: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class DownNoter:
    """A listener of invalidations that notes when they go down."""

    def __init__(self, downs: list[float]) -> None:
        self._downs = downs

    def changed(self, change: Change) -> None:
        return None

    def down(self) -> None:
        self._downs.append(time.monotonic())

    def up(self) -> None:
        return None


class Setup:
    def __init__(self, url: str) -> None:
        self.store = redis_store(url)
        self.leases = LeaseHolder(self.store, asyncio.get_running_loop(), ttl_ms=120_000)
        self.downs: list[float] = []
        self.invalidations = Invalidations(self.store, [self.leases, DownNoter(self.downs)])

    async def close(self) -> None:
        await self.leases.close()
        await self.invalidations.close()
        await self.store.close()


@pytest.fixture
async def team(redis_server: RedisServer) -> AsyncIterator[str]:
    name = "m" + os.urandom(4).hex()
    r = aioredis.Redis.from_url(redis_server.url)
    await r.hset(layout.keys(name), KEY, b"{}")
    yield name
    await r.aclose()


async def started(url: str) -> Setup:
    s = Setup(url)
    await s.invalidations.start()
    assert s.invalidations.live
    return s


async def quiet(s: Setup) -> None:
    """Until every grant and return in flight has been answered."""
    await until(lambda: not s.leases._tasks)


async def leased(s: Setup, p: Principal) -> Lease:
    """The key's first request goes to the store and starts its lease; wait for it."""
    assert s.leases.take(p, 10, COST) is None
    await quiet(s)
    lease = s.leases.take(p, 10, COST)
    assert lease is not None
    return lease


COST = 1000  # nanos each request reserves
BUDGET = Budget(10**9, "daily")


def principal(team: str, budget: Budget = BUDGET) -> Principal:
    return Principal(team=team, key_id=KEY, key_limits=Limits(rpm=100_000), team_budget=budget)


async def reserved(url: str, team: str) -> int:
    """The team's budget reservations: what leases hold plus what their requests took
    (requests here never settle). Unlike a limiter's, it does not drain with time."""
    r = aioredis.Redis.from_url(url)
    try:
        return int(await r.hget(layout.budget(team), "reserved") or 0)
    finally:
        await r.aclose()


async def test_grant_in_the_background_then_admit_locally_then_top_up(
        redis_server: RedisServer, team: str) -> None:
    s = await started(redis_server.url)
    p = principal(team)
    lease = await leased(s, p)
    assert lease.requests == MIN_REQUESTS - 1 and s.leases.admitted == 1
    for _ in range(3):  # the second leaves it below half: a top-up, adding to what is left
        assert s.leases.take(p, 10, COST) is lease
    assert lease.renewing and lease.requests == 0
    assert s.leases.take(p, 10, COST) is None  # empty until it lands: the store admits it
    await quiet(s)
    assert s.leases.take(p, 10, COST) is lease
    assert s.leases.admitted == 5
    assert await reserved(redis_server.url, team) > 5 * COST  # the top-up's share
    await s.close()  # gives back everything no request took
    assert await reserved(redis_server.url, team) == 5 * COST


async def test_a_lease_in_use_is_renewed(redis_server: RedisServer, team: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.accounting.lease_holder.RENEW_S", 0.05)
    s = await started(redis_server.url)
    p = principal(team)
    lease = await leased(s, p)
    first = lease.renewed_at
    await until(lambda: lease.renewed_at > first)  # what it held went back for a fresh share
    await quiet(s)
    assert s.leases.take(p, 10, COST) is lease
    await s.close()
    assert await reserved(redis_server.url, team) == 2 * COST


async def test_an_announced_change_drops_the_lease_and_gives_it_back_before_the_ack(
        redis_server: RedisServer, team: str) -> None:
    s = await started(redis_server.url)
    other = await started(redis_server.url)  # another process, announcing
    p = principal(team)
    await leased(s, p)
    await other.invalidations.announce(Change(team, KEY))
    assert not s.leases.held(p)
    # Acknowledged only once returned: the store holds nothing for the dropped lease.
    assert await reserved(redis_server.url, team) == COST
    await s.close()
    await other.close()


async def test_a_cache_hit_does_not_start_a_lease(redis_server: RedisServer,
                                                  team: str) -> None:
    s = await started(redis_server.url)
    p = principal(team)
    assert s.leases.take(p, 0, 0, start=False) is None
    await quiet(s)
    assert not s.leases.held(p)
    await s.close()


async def test_a_drop_elsewhere_leaves_a_grant_in_flight_alone(
        redis_server: RedisServer, team: str) -> None:
    s = await started(redis_server.url)
    p = principal(team)
    assert s.leases.take(p, 10, COST) is None  # its grant is on its way
    assert s.leases.drop(team + "-other") is None
    await quiet(s)
    assert s.leases.take(p, 10, COST) is not None
    await s.close()


async def test_a_policy_change_seen_on_the_principal_starts_a_new_lease(
        redis_server: RedisServer, team: str) -> None:
    s = await started(redis_server.url)
    p = principal(team)
    first = await leased(s, p)
    changed = principal(team, Budget(2 * 10**9, "daily"))
    assert s.leases.take(changed, 10, COST) is None  # the old lease goes back
    await quiet(s)
    second = s.leases.take(changed, 10, COST)
    assert second is not None and second is not first
    assert second.policy == Policy.of(changed)
    await s.close()


async def test_losing_the_subscription_drops_every_lease_until_it_is_back(
        redis_server: RedisServer, team: str) -> None:
    s = await started(redis_server.url)
    p = principal(team)
    await leased(s, p)
    r = aioredis.Redis.from_url(redis_server.url)
    await r.client_kill_filter(_type="pubsub")
    await r.aclose()
    await until(lambda: not s.leases.held(p))
    await until(lambda: s.invalidations.live)  # subscribed again, with backoff
    await leased(s, p)
    await s.close()


async def test_a_stalled_server_is_noticed_by_the_subscription(
        tmp_path: Path, team: str) -> None:
    server = RedisServer(tmp_path)
    try:
        s = await started(server.url)
        down = s.downs
        os.kill(server.proc.pid, signal.SIGSTOP)  # silent, not closed: only PING tells
        stopped = time.monotonic()
        try:
            await until(lambda: bool(down))
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert down[0] - stopped < 3.0  # within two PING periods (1 s each)
        await until(lambda: s.invalidations.live)
        await s.close()
    finally:
        server.stop()


async def test_idle_leases_go_back(redis_server: RedisServer, team: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.accounting.lease_holder.IDLE_S", 0.2)
    s = await started(redis_server.url)
    p = principal(team)
    await leased(s, p)
    await until(lambda: not s.leases.held(p))
    await until(lambda: not s.leases._tasks)  # the return has landed
    assert await reserved(redis_server.url, team) == COST
    await s.close()


async def test_a_grant_answered_after_a_drop_is_given_back(
        redis_server: RedisServer, team: str) -> None:
    s = await started(redis_server.url)
    p = principal(team)
    assert s.leases.take(p, 10, COST) is None  # the grant is on its way
    dropped: Awaitable[object] | None = s.leases.drop(team, KEY)
    assert dropped is not None
    await dropped
    await quiet(s)
    assert not s.leases.held(p)
    assert await reserved(redis_server.url, team) == 0
    await s.close()
