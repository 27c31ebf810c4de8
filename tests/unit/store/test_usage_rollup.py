"""The usage event and the daily rollups carry cache writes and reasoning tokens, the same
in both stores (settle.lua against a real redis-server, and memory_ledger.py)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest

from gateway.accounting.metering import Outcome, RequestContext, settlement
from gateway.canonical import CanonicalRequest, Deployment, Target, Usage
from gateway.store import Store, layout
from gateway.store.base import ROLLUP_METRICS
from policies.budgets import day
from policies.keys import ANONYMOUS
from tests.support.stores import STORES, store_of


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = store_of(request, request.param)
    yield s
    await s.close()


def context(team: str) -> RequestContext:
    req = CanonicalRequest("chat", "claude", {"messages": []}, request_id=os.urandom(6).hex())
    return RequestContext(replace(ANONYMOUS, team=team), req, req.request_id, 0, 100, 0, ())


async def test_cache_writes_and_reasoning_reach_the_event_and_the_rollup(store: Store) -> None:
    team = "t" + os.urandom(4).hex()  # tests share one redis: each gets its own team
    ctx = context(team)
    sonnet = Deployment("claude/x", "claude", "anthropic", Target("http://x/v1", "x"), 3, 15,
                        price_cached_input=0.30, price_cache_write=3.75)
    out = Outcome(time.monotonic(), status=200, deployment=sonnet,
                  usage=Usage(30721, 67, cached_tokens=30433, cache_write_tokens=287,
                              reasoning_tokens=40))
    args = settlement(ctx, out)
    await store.settle(args)
    event = orjson.loads((await store.xrange(layout.events(team), None, 1000))[-1][1])
    assert {k: event[k] for k in ("prompt_tokens", "completion_tokens", "cached_tokens",
                                  "cache_write_tokens", "reasoning_tokens", "cost_usd")} == {
        "prompt_tokens": 30721, "completion_tokens": 67, "cached_tokens": 30433,
        "cache_write_tokens": 287, "reasoning_tokens": 40, "cost_usd": 0.01121415}
    after = await store.hgetall(layout.rollup(team))
    prefix = f"{day(time.time())}|claude|"

    assert {m: int(after.get(prefix + m, b"0")) for m in ROLLUP_METRICS} == {
        "requests": 1, "prompt_tokens": 30721, "completion_tokens": 67,
        "cached_tokens": 30433, "cost_nanos": 11_214_150, "cache_hits": 0, "errors": 0,
        "estimated": 0, "saved_tokens": 0, "saved_cost_nanos": 0,
        "cache_write_tokens": 287, "reasoning_tokens": 40}
