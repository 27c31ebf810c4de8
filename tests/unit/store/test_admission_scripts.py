"""Admission and settlement, the same contract for both stores: the Lua scripts against a
real redis-server, and the in-memory store's Python mirror of them."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.store import ALL, AdmitArgs, Release, SettleArgs, Store, layout, memory_ledger
from gateway.store.base import SETTLED_RETENTION_MS
from policies.budgets import Budget, day, period_id
from policies.ratelimits import Limits, duration
from tests.support.procs import REPO, RedisServer
from tests.support.stores import STORES, store_of


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = store_of(request, request.param)
    yield s
    await s.close()


@pytest.fixture
def team() -> str:
    return "t" + os.urandom(4).hex()  # tests share one redis: each gets its own team


NONE = Limits()


def args(team: str, *, key: Limits = NONE, whole: Limits = NONE, tokens: int = 0,
         budget: int | None = None, cost: int = 0, ttl_ms: int = 60_000,
         check: bool = False) -> AdmitArgs:
    return AdmitArgs(team=team, key_id="k1", reservation=os.urandom(6).hex(), check_key=check,
                     key_limits=key, team_limits=whole, tokens=tokens,
                     team_budget=Budget(budget, "daily") if budget is not None else None,
                     key_budget=None, cost_nanos=cost, ttl_ms=ttl_ms)


def settle_args(a: AdmitArgs, *, cost: int = 0, delta: int = 0, model: str = "m") -> SettleArgs:
    return SettleArgs(team=a.team, key_id=a.key_id, settlement=a.reservation,
                      reservation=a.reservation,
                      reserved_nanos=a.cost_nanos, token_delta=delta,
                      key_tpm=a.key_limits.tpm, team_tpm=a.team_limits.tpm, cost_nanos=cost,
                      team_period="daily", key_period="monthly", model=model, prompt_tokens=3,
                      completion_tokens=4, cached_tokens=1, cache_hit=False, error=False,
                      estimated=True, event=orjson.dumps({"request_id": a.reservation}))


async def test_rpm_burst_then_refused_with_retry(store: Store, team: str) -> None:
    results = [await store.admit(args(team, key=Limits(rpm=5))) for _ in range(7)]
    assert [r.refused for r in results] == [""] * 5 + ["key_rpm"] * 2
    assert [r.requests.remaining for r in results[:5] if r.requests] == [4, 3, 2, 1, 0]
    refused = results[5]
    assert 11_000 < refused.retry_ms <= 12_000  # one emission interval: 60 s / 5
    assert refused.requests is not None and refused.requests.remaining == 0
    assert 59_000 < refused.requests.reset_ms <= 60_000


async def test_team_limit_spans_keys_and_tighter_limiter_reported(store: Store,
                                                                  team: str) -> None:
    first = await store.admit(args(team, key=Limits(rpm=10), whole=Limits(rpm=2)))
    assert first.requests is not None
    assert (first.requests.limit, first.requests.remaining) == (2, 1)  # the team's is tighter
    other_key = args(team, whole=Limits(rpm=2))
    other_key.key_id = "k2"
    assert (await store.admit(other_key)).refused == ""
    assert (await store.admit(args(team, whole=Limits(rpm=2)))).refused == "team_rpm"


async def test_tpm_quantities_and_settlement_refund(store: Store, team: str) -> None:
    limits = Limits(tpm=100)
    admitted = [args(team, key=limits, tokens=30) for _ in range(4)]
    results = [await store.admit(a) for a in admitted]
    assert [r.refused for r in results] == ["", "", "", "key_tpm"]
    await store.settle(settle_args(admitted[0], delta=-30))  # used none of its 30
    assert (await store.admit(args(team, key=limits, tokens=30))).refused == ""
    too_big = await store.admit(args(team, key=limits, tokens=101))
    assert (too_big.refused, too_big.retry_ms) == ("key_tpm", -1)  # can never fit


async def test_budget_reserves_and_settles(store: Store, team: str) -> None:
    admitted = [args(team, budget=100, cost=30) for _ in range(4)]
    assert [(await store.admit(a)).refused for a in admitted] == ["", "", "", "team_budget"]
    await store.settle(settle_args(admitted[0], cost=10))  # spent 10, reserved 60
    ledger = await store.hgetall(layout.budget(team))
    assert (ledger["spent"], ledger["reserved"]) == (b"10", b"60")
    assert ledger["period"] == period_id("daily", time.time()).encode()
    assert (await store.admit(args(team, budget=100, cost=30))).refused == ""  # 10+60+30
    assert (await store.admit(args(team, budget=100, cost=1))).refused == "team_budget"


async def test_reservations_of_crashed_requests_expire(store: Store, team: str) -> None:
    assert (await store.admit(args(team, budget=50, cost=50, ttl_ms=100))).refused == ""
    assert (await store.admit(args(team, budget=50, cost=50))).refused == "team_budget"
    await asyncio.sleep(0.2)  # the reservation's TTL is the behaviour under test
    assert (await store.admit(args(team, budget=50, cost=50))).refused == ""
    assert (await store.hgetall(layout.budget(team)))["reserved"] == b"50"


async def test_revoked_key_is_refused(store: Store, team: str) -> None:
    assert (await store.admit(args(team, check=True))).refused == "revoked"
    await store.hset(layout.keys(team), "k1", b"{}")
    assert (await store.admit(args(team, check=True))).refused == ""


async def test_settlement_rolls_up_and_appends_event(store: Store, team: str) -> None:
    admitted = [args(team) for _ in range(3)]
    for i, a in enumerate(admitted):
        await store.settle(settle_args(a, cost=7, model="m" if i else "other"))
    rollup = await store.hgetall(layout.rollup(team))
    today = day(time.time())
    assert rollup[f"{today}|m|requests"] == b"2" and rollup[f"{today}|other|requests"] == b"1"
    assert rollup[f"{today}|m|cost_nanos"] == b"14"
    assert rollup[f"{today}|m|cached_tokens"] == b"2" and rollup[f"{today}|m|estimated"] == b"2"
    events = await store.xrange(layout.events(team), None, 10)
    assert [orjson.loads(e)["request_id"] for _, e in events] == [a.reservation for a in admitted]
    assert await store.xrange(layout.events(team), events[0][0], 10) == events[1:]


async def test_a_settlement_sent_again_is_applied_once(store: Store, team: str) -> None:
    # A batch resent after its reply was lost (a stall, a dropped connection), and one
    # settlement sent a third time on its own: one event, one spend, one rollup each.
    admitted = [args(team, budget=1000, cost=100) for _ in range(3)]
    for a in admitted:
        assert (await store.admit(a)).refused == ""
    batch = [settle_args(a, cost=60) for a in admitted]
    await store.settle_many(batch)
    await store.settle_many(batch)
    await store.settle(batch[0])
    budget = await store.hgetall(layout.budget(team))
    assert budget["spent"] == b"180" and budget["reserved"] == b"0"
    assert not [f for f in budget if f.startswith("r:")]
    rollup = await store.hgetall(layout.rollup(team))
    assert rollup[f"{day(time.time())}|m|requests"] == b"3"
    assert len(await store.xrange(layout.events(team), None, 10)) == 3


async def test_a_lost_admission_is_given_back_whole(store: Store, team: str) -> None:
    # An admission the request never heard of: released by its settlement (ALL: whatever
    # its own reservation holds) or, when it was refused, by a Release; twice is harmless.
    lost, refused = args(team, budget=1000, cost=300), args(team, budget=1000, cost=400)
    for a in (lost, refused):
        assert (await store.admit(a)).refused == ""
    assert (await store.hgetall(layout.budget(team)))["reserved"] == b"700"
    settled = settle_args(lost, cost=0)
    settled.reserved_nanos, settled.token_delta = ALL, 0
    await store.settle_many([settled, Release(team, refused.reservation),
                             Release(team, refused.reservation)])
    budget = await store.hgetall(layout.budget(team))
    assert budget["reserved"] == b"0" and budget["spent"] == b"0"
    assert not [f for f in budget if f.startswith("r:")]
    assert (await store.admit(args(team, budget=1000, cost=1000))).refused == ""


async def test_concurrent_admissions_never_overspend(store: Store, team: str) -> None:
    results = await asyncio.gather(*(store.admit(args(team, budget=7 * 13, cost=13))
                                     for _ in range(60)))
    assert sum(r.refused == "" for r in results) == 7
    assert (await store.hgetall(layout.budget(team)))["reserved"] == b"91"


async def test_lua_calendar_matches_python(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    common = (REPO / "gateway" / "store" / "lua" / "common.lua").read_text()
    script = client.register_script(
        common.replace("local t = redis.call('TIME')", "local t = {ARGV[1], '0'}")
        + "\nreturn {today, period_id('monthly')}")
    rng = random.Random(7)
    samples = [0, 951_782_400, 4_107_542_400] + [rng.randrange(0, 4_102_444_800)
                                                  for _ in range(200)]
    for sec in samples:
        got = [v.decode() for v in await script(keys=[], args=[sec])]
        assert got == [day(sec), period_id("monthly", sec)], sec
    await client.aclose()


def test_reset_durations_are_go_style() -> None:
    assert [duration(ms) for ms in (0, 20.2, 999, 1000, 1500, 59_999.5, 60_000, 360_000,
                                    3_723_000)] == \
        ["0ms", "21ms", "999ms", "1s", "1.5s", "1m0s", "1m0s", "6m0s", "1h2m3s"]


def test_the_memory_ledger_forgets_settlements_after_their_retention(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Settled ids are remembered 15 minutes (a resent batch applies once), then dropped
    oldest first: the in-memory ledger holds what that window settled, no more."""
    st = memory_ledger.LedgerState(100)
    clock = [1_000_000.0]
    monkeypatch.setattr(memory_ledger.time, "time", lambda: clock[0])
    a = args("t", key=Limits())
    for i in range(5):
        a.reservation = f"r{i}"
        memory_ledger.settle(st, settle_args(a))
        clock[0] += 1
    settled = st.zsets[layout.settled("t")]
    assert list(settled) == [f"r{i}" for i in range(5)]
    memory_ledger.settle(st, settle_args(a))  # r4 again: applied once
    assert len(st.streams[layout.events("t")]) == 5
    clock[0] += SETTLED_RETENTION_MS / 1000 - 2.5  # r0..r2 out of the window, r3, r4 in
    a.reservation = "r5"
    memory_ledger.settle(st, settle_args(a))
    assert list(settled) == ["r3", "r4", "r5"]
