"""The lease script (lua/lease.lua) and settlement from a lease, against a real
redis-server: a grant is a share of what is left and counts as used at once, what a lease
gives back is exactly what it did not use, and near a limit nothing is granted."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.store import AdmitArgs, LeaseArgs, RedisStore, SettleArgs, layout
from policies.budgets import Budget
from policies.ratelimits import Limits
from tests.support.stores import REDIS_KINDS, async_inspector, redis_store, redis_url

KEY = "k1"


@pytest.fixture(params=REDIS_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(request: pytest.FixtureRequest, kind: str) -> str:
    return redis_url(request, kind)


@pytest.fixture
async def store(url: str) -> AsyncIterator[RedisStore]:
    s = redis_store(url)
    yield s
    await s.close()


@pytest.fixture
async def r(kind: str, url: str) -> AsyncIterator[Any]:
    """redis-py, to look behind the store's back."""
    client = async_inspector(kind, url)
    yield client
    await client.aclose()


@pytest.fixture
async def team(r: Any) -> str:
    name = "l" + os.urandom(4).hex()  # tests share one redis: each gets its own team
    await r.hset(layout.keys(name), KEY, b"{}")  # the key exists (is not revoked)
    return name


def lease(team: str, *, limits: tuple[int, int, int, int] = (0, 0, 0, 0),
          wanted: tuple[int, int, int] = (1000, 10**9, 10**12),
          least: tuple[int, int, int] = (4, 40, 4000), budget: int | None = None,
          ttl_ms: int = 60_000, returning: tuple[int, int, int] = (0, 0, 0)) -> LeaseArgs:
    return LeaseArgs(team=team, key_id=KEY, lease_id="lease:t:1", limits=limits,
                     returning=returning, wanted=wanted, least=least,
                     team_budget=Budget(budget, "daily") if budget else None,
                     key_budget=None, ttl_ms=ttl_ms, share=16)


def give_back(team: str, returning: tuple[int, int, int], *,
              limits: tuple[int, int, int, int] = (0, 0, 0, 0)) -> LeaseArgs:
    return lease(team, limits=limits, returning=returning, wanted=(0, 0, 0), least=(0, 0, 0))


def admit(team: str, *, rpm: int = 0, tpm: int = 0, tokens: int = 0,
          budget: int | None = None, cost: int = 0) -> AdmitArgs:
    return AdmitArgs(team=team, key_id=KEY, reservation=os.urandom(6).hex(), check_key=True,
                     key_limits=Limits(rpm=rpm, tpm=tpm), team_limits=Limits(), tokens=tokens,
                     team_budget=Budget(budget, "daily") if budget else None, key_budget=None,
                     cost_nanos=cost, ttl_ms=60_000)


def settle(team: str, reservation: str, reserved: int, cost: int) -> SettleArgs:
    return SettleArgs(team=team, key_id=KEY, settlement=os.urandom(6).hex(),
                      reservation=reservation, reserved_nanos=reserved,
                      token_delta=0, key_tpm=0, team_tpm=0, cost_nanos=cost,
                      team_period="daily", key_period="monthly", model="m", prompt_tokens=1,
                      completion_tokens=1, cached_tokens=0, cache_hit=False, error=False,
                      estimated=False, event=orjson.dumps({"request_id": "x"}))


async def budget_hash(r: Any, team: str) -> dict[str, str]:
    h = await r.hgetall(layout.budget(team))
    return {k.decode(): v.decode() for k, v in h.items()}


async def test_a_grant_is_a_sixteenth_of_what_is_left_and_counts_as_used(
        store: RedisStore, team: str) -> None:
    # 160 a minute: one comes back every 375 ms, far longer than these calls take.
    grant = await store.lease(lease(team, limits=(160, 0, 0, 0)))
    assert grant.refused == ""
    assert grant.granted == (10, math.inf, math.inf)  # 160 / 16; tokens and nanos unbounded
    assert grant.requests is not None and grant.requests.remaining == 150
    after = await store.admit(admit(team, rpm=160))
    assert after.requests is not None and after.requests.remaining == 149


async def test_tokens_are_shared_out_the_same_way(store: RedisStore, team: str) -> None:
    grant = await store.lease(lease(team, limits=(0, 160_000, 0, 0), wanted=(10, 1000, 0)))
    assert grant.granted[:2] == (math.inf, 1000)  # what was wanted: less than a sixteenth
    assert grant.tokens is not None and grant.tokens.remaining == 159_000
    again = await store.lease(lease(team, limits=(0, 160_000, 0, 0), wanted=(10, 10**6, 0)))
    assert again.tokens is not None  # a sixteenth of what was left (some came back since)
    left = again.tokens.remaining + int(again.granted[1])
    assert 159_000 <= left < 160_000 and again.granted[1] == left // 16


async def test_nothing_is_granted_when_the_least_worth_having_does_not_fit(
        store: RedisStore, team: str) -> None:
    assert (await store.lease(lease(team, limits=(63, 0, 0, 0)))).refused == "none"  # 63/16 < 4
    after = await store.admit(admit(team, rpm=63))
    assert after.requests is not None and after.requests.remaining == 62  # nothing was taken
    refused = await store.lease(lease(team, budget=63_999))  # 63,999 / 16 < 4,000 (least)
    assert refused.refused == "none"


async def test_returning_a_grant_gives_back_exactly_what_it_took(
        store: RedisStore, team: str) -> None:
    limits = (1600, 16_000, 0, 0)
    grant = await store.lease(lease(team, limits=limits, wanted=(100, 1000, 0)))
    assert grant.granted[:2] == (100, 1000)
    assert (await store.lease(give_back(team, (100, 1000, 0), limits=limits))).refused == \
        "returned"
    after = await store.admit(admit(team, rpm=1600, tpm=16_000, tokens=10))
    assert after.requests is not None and after.requests.remaining == 1599
    assert after.tokens is not None and after.tokens.remaining == 15_990


async def test_budget_share_is_reserved_and_settled_from_request_by_request(
        store: RedisStore, team: str, r: Any) -> None:
    budget = 1_600_000
    grant = await store.lease(lease(team, budget=budget))
    assert grant.granted[2] == 100_000
    h = await budget_hash(r, team)
    assert (h["reserved"], h["r:lease:t:1"]) == ("100000", f"100000 {KEY}")
    # Three requests admitted from the lease, 1,000 each reserved, settle at 700 each.
    for _ in range(3):
        await store.settle(settle(team, "lease:t:1", 1000, 700))
    h = await budget_hash(r, team)
    assert (h["reserved"], h["spent"], h["r:lease:t:1"]) == ("97000", "2100", f"97000 {KEY}")
    # A renewal gives back what is left (50,000 of it still free; the rest is the parts
    # of requests in flight) and takes 1/16 of what is then left.
    more = await store.lease(lease(team, budget=budget, returning=(0, 0, 50_000)))
    assert more.granted[2] == (budget - 2100 - 47_000) // 16
    held = 47_000 + int(more.granted[2])
    h = await budget_hash(r, team)
    assert (h["reserved"], h["r:lease:t:1"]) == (str(held), f"{held} {KEY}")
    await store.lease(give_back(team, (0, 0, held)))
    h = await budget_hash(r, team)
    assert (h["reserved"], h["spent"], "r:lease:t:1" in h) == ("0", "2100", False)
    assert await r.zscore(layout.reservations(team), "lease:t:1") is None


async def test_admission_sees_what_leases_hold(store: RedisStore, team: str) -> None:
    budget = 64_000  # exactly 16 requests of 4,000: the lease may take one sixteenth
    grant = await store.lease(lease(team, budget=budget))
    assert grant.granted[2] == 4_000
    admitted = [await store.admit(admit(team, budget=budget, cost=4_000)) for _ in range(16)]
    assert [a.refused for a in admitted] == [""] * 15 + ["team_budget"]


async def test_an_abandoned_lease_lapses(store: RedisStore, team: str,
                                         r: Any) -> None:
    await store.lease(lease(team, budget=1_600_000, ttl_ms=50))
    await asyncio.sleep(0.1)  # its process died: nobody renews or returns it
    await store.admit(admit(team, budget=1_600_000, cost=10))  # admission purges it
    h = await budget_hash(r, team)
    assert h["reserved"] == "10" and "r:lease:t:1" not in h


async def test_a_revoked_key_gets_no_lease_but_what_it_held_goes_back(
        store: RedisStore, team: str, r: Any) -> None:
    await store.lease(lease(team, budget=1_600_000))
    await r.hdel(layout.keys(team), KEY)
    renewal = lease(team, budget=1_600_000, returning=(0, 0, 100_000))
    assert (await store.lease(renewal)).refused == "revoked"
    assert (await budget_hash(r, team))["reserved"] == "0"


async def test_a_key_with_no_limits_or_budget_gets_an_unbounded_lease(
        store: RedisStore, team: str) -> None:
    grant = await store.lease(lease(team))
    assert grant.granted == (math.inf, math.inf, math.inf)
    assert (grant.requests, grant.tokens) == (None, None)
