"""The Spend page's numbers from the store: spend against budgets, and how much of each
rate limit is in use (from the limiters' GCRA state), in memory and in Redis."""

from __future__ import annotations

import pytest

from gateway.accounting.accounts import Accounts
from gateway.accounting.invalidation import LocalInvalidations
from gateway.config.accounts import TeamConfig
from gateway.console import spend
from gateway.store import AdmitArgs, Store
from policies.budgets import Budget, to_nanos
from policies.ratelimits import Limits
from tests.support.accounts import suffix
from tests.support.console import settled


async def test_spend_and_limits_in_use(console_store: Store) -> None:
    store = console_store
    team = f"spend-{suffix()}"  # the Redis database outlives the test
    accounts = Accounts(store, LocalInvalidations([]))
    await accounts.start([TeamConfig.model_validate({
        "name": team, "limits": {"rpm": 60, "tpm": 6000}, "key_limits": {"rpm": 6},
        "budget": {"usd": 1, "period": "daily"},
        "keys": [{"id": "k1", "key": f"tk-{team}-0123456789abcdefghij"}]})])
    budget = Budget(to_nanos(1), "daily")
    for i in range(3):
        result = await store.admit(AdmitArgs(
            team, "k1", f"{team}-r{i}", True, Limits(6, 0), Limits(60, 6000), 100, budget,
            None, 1000, 60_000))
        assert not result.refused
    _, _, args, _ = settled(team=team, key="k1", rid=f"{team}-r0", tokens=(100, 200),
                            team_budget=budget)
    await store.settle(args)

    overview = await spend.overview(accounts, store)
    row = next(t for t in overview["teams"] if t["name"] == team)
    assert row["usage"]["rpm"]["used"] == pytest.approx(3, abs=0.1)
    assert row["usage"]["rpm"]["limit"] == 60
    assert row["usage"]["tpm"]["used"] == pytest.approx(300, abs=5)
    assert row["spend"]["budget_usd"] == 1 and row["spend"]["spent_usd"] == pytest.approx(
        args.cost_nanos / 1e9)
    key = row["keys"][0]
    assert key["id"] == "k1" and "hash" not in key and "key" not in key
    assert key["usage"]["rpm"] == {"used": pytest.approx(3, abs=0.1), "limit": 6}
    assert key["usage"]["tpm"] is None  # unlimited
    assert key["spend"]["spent_usd"] == pytest.approx(args.cost_nanos / 1e9)
    assert any(r["team"] == team and r["requests"] == 1 for r in overview["daily"])


def test_in_use_arithmetic() -> None:
    assert spend.in_use(None, 1000.0, 60) == {"used": 0.0, "limit": 60}
    assert spend.in_use(1000.0 + 30_000, 1000.0, 60) == {"used": 30.0, "limit": 60}
    assert spend.in_use(500.0, 1000.0, 60) == {"used": 0.0, "limit": 60}  # in the past
    assert spend.in_use(5000.0, 1000.0, 0) is None
