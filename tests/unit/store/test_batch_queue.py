"""The batch lane's queue, the same contract for every store (the Lua scripts against a
real redis-server and a Redis Cluster, and their in-memory mirror): leases that lapse hand
lines on, results written once per custom_id with their settlement, status transitions
with claims."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.store import ALL, AdmitArgs, SettleArgs, Store, layout
from gateway.store.batch_base import LineEnd
from policies.budgets import Budget
from policies.ratelimits import Limits
from tests.support.stores import STORES, store_of


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = store_of(request, request.param)
    yield s
    await s.close()


@pytest.fixture
def team() -> str:
    return "t" + os.urandom(4).hex()  # tests share one redis: each gets its own team


async def started(store: Store, team: str, total: int, bid: str = "b1") -> str:
    await store.batch_create(team, bid, {"status": b"validating"}, 1)
    assert await store.batch_update(team, bid, ["validating"],
                                    {"status": b"in_progress", "total": b"%d" % total})
    return bid


async def admitted(store: Store, team: str, cost: int) -> AdmitArgs:
    a = AdmitArgs(team=team, key_id="k1", reservation=os.urandom(6).hex(), check_key=False,
                  key_limits=Limits(), team_limits=Limits(), tokens=0,
                  team_budget=Budget(10**9, "daily"), key_budget=None, cost_nanos=cost,
                  ttl_ms=60_000)
    assert (await store.admit(a)).refused == ""
    return a


def settlement(a: AdmitArgs, cost: int) -> SettleArgs:
    return SettleArgs(team=a.team, key_id="k1", settlement=a.reservation,
                      reservation=a.reservation, reserved_nanos=ALL, token_delta=0, key_tpm=0,
                      team_tpm=0, cost_nanos=cost, team_period="daily", key_period="monthly",
                      model="m", prompt_tokens=3, completion_tokens=4, cached_tokens=1,
                      cache_hit=False, error=False, estimated=False,
                      event=orjson.dumps({"request_id": a.reservation}))


async def budget(store: Store, team: str) -> tuple[int, int]:
    h = await store.hgetall(layout.budget(team))
    return int(h.get("spent", b"0")), int(h.get("reserved", b"0"))


async def test_lines_are_taken_in_order_then_given_back_then_lapsed(
        store: Store, team: str) -> None:
    bid = await started(store, team, 5)
    first = await store.batch_take(team, bid, 3, 60_000, "a")
    assert (first.indexes, first.running, first.pending) == ([0, 1, 2], 3, 2)
    # A line given back is taken again before the lines never taken.
    await store.batch_line(LineEnd(team, bid, first.members[1], "c1"))
    again = await store.batch_take(team, bid, 2, 50, "b")
    assert again.indexes == [1, 3]
    await asyncio.sleep(0.1)  # the 50 ms leases lapse: the behaviour under test
    lapsed = await store.batch_take(team, bid, 5, 60_000, "c")
    assert sorted(lapsed.indexes) == [1, 3, 4]
    assert (lapsed.running, lapsed.pending) == (5, 0)


async def test_renewed_lease_does_not_lapse(store: Store, team: str) -> None:
    bid = await started(store, team, 2)
    taken = await store.batch_take(team, bid, 1, 100, "a")
    for _ in range(3):
        await asyncio.sleep(0.05)
        await store.batch_renew(team, bid, taken.members, 100)
    assert (await store.batch_take(team, bid, 5, 100, "b")).indexes == [1]


async def test_first_result_is_written_and_settled_once(store: Store, team: str) -> None:
    bid = await started(store, team, 1)
    member = (await store.batch_take(team, bid, 1, 50, "a")).members[0]
    await asyncio.sleep(0.1)  # a slow lane's lease lapses, another lane takes the line
    other = (await store.batch_take(team, bid, 1, 60_000, "b")).members[0]
    first, second = await admitted(store, team, 500), await admitted(store, team, 500)
    assert await budget(store, team) == (0, 1000)
    assert await store.batch_line(LineEnd(team, bid, other, "c0", b'{"ok":1}',
                                          settle=settlement(first, 200)))
    # The slow lane finishes too: its result is not written, only its reservation is back.
    assert not await store.batch_line(LineEnd(team, bid, member, "c0", b'{"ok":2}',
                                              settle=settlement(second, 200)))
    assert await budget(store, team) == (200, 0)
    events = await store.xrange(layout.events(team), None, 10)
    assert [orjson.loads(e)["request_id"] for _, e in events] == [first.reservation]
    record = await store.hgetall(layout.batch(team, bid))
    assert (record["completed"], record.get("failed"), record["prompt_tokens"]) == \
        (b"1", None, b"3")
    results = await store.hgetall(layout.batch_results(team, bid))
    assert results == {"c0": b'0 0 {"ok":1}'}
    after = await store.batch_take(team, bid, 5, 60_000, "c")
    assert (after.members, after.running, after.pending) == ([], 0, 0)


async def test_given_back_line_returns_only_its_reservation(store: Store, team: str) -> None:
    bid = await started(store, team, 1)
    member = (await store.batch_take(team, bid, 1, 60_000, "a")).members[0]
    a = await admitted(store, team, 700)
    assert not await store.batch_line(LineEnd(team, bid, member, "c0",
                                              settle=settlement(a, 300)))
    assert await budget(store, team) == (0, 0)
    assert await store.xrange(layout.events(team), None, 10) == []
    assert (await store.batch_take(team, bid, 1, 60_000, "b")).indexes == [0]


async def test_no_result_once_the_batch_is_finalizing(store: Store, team: str) -> None:
    bid = await started(store, team, 2)
    taken = await store.batch_take(team, bid, 2, 60_000, "a")
    assert await store.batch_line(LineEnd(team, bid, taken.members[0], "c0", b"x",
                                          failed=True))
    assert await store.batch_update(team, bid, ["in_progress"], {"status": b"finalizing"})
    assert not await store.batch_line(LineEnd(team, bid, taken.members[1], "c1", b"y"))
    assert (await store.hgetall(layout.batch(team, bid)))["failed"] == b"1"
    assert set(await store.hgetall(layout.batch_results(team, bid))) == {"c0"}
    await store.batch_drop(team, bid)
    assert await store.hgetall(layout.batch_results(team, bid)) == {}


async def test_transitions_expect_a_status_and_respect_claims(store: Store,
                                                             team: str) -> None:
    await store.batch_create(team, "b1", {"status": b"validating", "x": b"1"}, 5)
    await store.batch_create(team, "b1", {"status": b"other"}, 5)  # exists: unchanged
    assert not await store.batch_update(team, "nope", ["validating"], {"x": b"2"})
    assert not await store.batch_update(team, "b1", ["in_progress"], {"x": b"2"})
    assert await store.batch_update(team, "b1", ["validating"], {}, claim_ms=60_000)
    assert not await store.batch_update(team, "b1", ["validating"], {}, claim_ms=60_000)
    assert await store.batch_update(team, "b1", ["validating", "x"], {"x": b"3"})
    record = await store.hgetall(layout.batch(team, "b1"))
    assert (record["status"], record["x"]) == (b"validating", b"3")


async def test_listing_and_the_active_index(store: Store, team: str) -> None:
    for i, bid in enumerate(["b1", "b2", "b3"]):
        await store.batch_create(team, bid, {"status": b"validating"}, 100 + i)
    assert await store.batch_ids(team, None, 2) == ["b3", "b2"]
    assert await store.batch_ids(team, "b2", 5) == ["b1"]
    assert await store.batch_ids(team, "unknown", 5) == []
    await store.batch_activate(team, "b2", 7)
    await store.batch_activate(team, "b1", 3)
    mine = [a for a in await store.batch_active() if a[0] == team]
    assert mine == [(team, "b1", 3), (team, "b2", 7)]
    await store.batch_deactivate(team, "b1")
    assert [a for a in await store.batch_active() if a[0] == team] == [(team, "b2", 7)]
    await store.batch_deactivate(team, "b2")  # the session's lanes share this redis
