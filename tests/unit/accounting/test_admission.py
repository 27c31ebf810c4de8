"""Admission when the store's answer is lost on the way back (it ran, we never heard):
whatever it reserved goes back, under either outage policy, against a real redis-server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from gateway.accounting.admission import Admission
from gateway.accounting.metering import Meter, Outcome
from gateway.canonical import CanonicalRequest, Deployment, Target, Usage
from gateway.config.accounts import AdmissionConfig
from gateway.errors import GatewayError
from gateway.store import RedisStore, StoreUnavailable, layout
from gateway.wire.base import Arg, Keys, RedisConnection, Script, Subscription
from gateway.wire.redis_url import parse_url
from gateway.wire.resp import RespClient
from policies.budgets import Budget
from policies.keys import Principal
from tests.support.procs import RedisServer

PRICED = Deployment("d", "m", "openai", Target("http://x/v1", "m"), 0.0, 2.0)  # $2/M out
COST = 2_000 * 10  # the worst case reserved: max_tokens 10 at $2 per 1M tokens


class AnswerLost:
    """A real connection that loses the answer of the next admission: the script runs in
    Redis, the caller gets StoreUnavailable, as when a stall outlasts the timeout."""

    def __init__(self, inner: RedisConnection) -> None:
        self._inner = inner
        self.lose = 1
        self.execute_many = inner.execute_many
        self.close = inner.close

    async def execute(self, *args: Arg) -> Any:
        return await self._inner.execute(*args)

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        reply = await self._inner.evalsha(script, keys, args, once=once)
        if script.name == "admit" and self.lose:
            self.lose -= 1
            raise StoreUnavailable("redis unavailable (no reply in 1s)")
        return reply

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Subscription:
        return self._inner.subscription(channel, on_message, on_down, on_up)


@pytest.fixture
async def setup(redis_server: RedisServer) -> AsyncIterator[tuple[AnswerLost, RedisStore, str]]:
    conn = AnswerLost(RespClient(parse_url(redis_server.url)))
    store = RedisStore(conn)
    yield conn, store, "t" + os.urandom(4).hex()
    await store.close()


def principal(team: str) -> Principal:
    return Principal(team=team, key_id="k1", team_budget=Budget(10**9, "daily"))


def chat() -> CanonicalRequest:
    return CanonicalRequest("chat", "m", {"messages": [], "max_tokens": 10}, request_id="r")


async def reserved(store: RedisStore, team: str) -> dict[str, bytes]:
    budget = await store.hgetall(layout.budget(team))
    return {f: v for f, v in budget.items() if f == "reserved" or f.startswith("r:")}


async def test_refused_by_the_outage_policy_its_lost_reservation_goes_back(
        setup: tuple[AnswerLost, RedisStore, str]) -> None:
    conn, store, team = setup
    meter = Meter(store)
    admission = Admission(store, AdmissionConfig(on_store_outage="fail-closed"), 60_000, meter)
    assert conn.lose == 1
    await store.hset(layout.keys(team), "k1", b"{}")
    with pytest.raises(GatewayError) as info:
        await admission.admit(principal(team), chat(), [PRICED])
    assert info.value.status == 503 and "redis" not in info.value.message  # no internals
    assert (await reserved(store, team))["reserved"] == str(COST).encode()  # it did run
    await meter.close()  # the release, queued by the refusal, lands
    assert await reserved(store, team) == {"reserved": b"0"}


async def test_admitted_by_the_outage_policy_its_settlement_gives_back_all(
        setup: tuple[AnswerLost, RedisStore, str]) -> None:
    conn, store, team = setup
    meter = Meter(store)
    admission = Admission(store, AdmissionConfig(on_store_outage="fail-open"), 60_000, meter)
    await store.hset(layout.keys(team), "k1", b"{}")
    ctx = await admission.admit(principal(team), chat(), [PRICED])
    assert (await reserved(store, team))["reserved"] == str(COST).encode()
    out = Outcome(0.0, status=200, deployment=PRICED, usage=Usage(5, 4))
    meter.settle(ctx, out)
    await meter.close()
    budget = await store.hgetall(layout.budget(team))
    assert (budget["reserved"], budget["spent"]) == (b"0", b"8000")  # 4 tokens at $2/M, once
    assert not [f for f in budget if f.startswith("r:")]
    assert conn.lose == 0
