"""The Spend page's numbers, read from the store: per team and key, spend this period
against its budget, how much of each rate limit is in use now, and the daily rollups
(spend, requests, tokens, cache savings) behind the charts. Read when a console asks
(a few round trips per team), never on the request path."""

from __future__ import annotations

import time
from typing import Any

from gateway.accounting import ledger
from gateway.accounting.accounts import Accounts
from gateway.store import Store, layout
from policies.budgets import Budget, day, period_id, to_usd
from policies.keys import ANONYMOUS_TEAM
from policies.ratelimits import WINDOW_MS, Limits

DAYS = 30  # of daily rollups, today included


def balance(ledger_hash: dict[str, bytes], prefix: str, budget: Budget | None,
            now_s: float) -> dict[str, Any]:
    """Spent (this period) and reserved, in USD, of the team (`prefix` "") or a key
    (`k:<id>:`), against its budget. Spend is kept for keys without a budget too
    (monthly), as settlement counts it."""
    period = budget.period if budget else "monthly"
    current = period_id(period, now_s)
    stored = ledger_hash.get(prefix + "period", b"").decode()
    spent = int(ledger_hash.get(prefix + "spent", b"0")) if stored == current else 0
    return {"period": current, "spent_usd": to_usd(spent),
            "reserved_usd": to_usd(int(ledger_hash.get(prefix + "reserved", b"0"))),
            "budget_usd": budget.usd if budget else None}


def in_use(tat: float | None, now_ms: float, limit: int) -> dict[str, Any] | None:
    """How much of a per-minute GCRA limit is taken now: each unit pushed its TAT
    `60 s / limit` ahead of now, so (TAT - now) / interval units are still counted."""
    if limit <= 0:
        return None
    used = 0.0 if tat is None else max(0.0, tat - now_ms) * limit / WINDOW_MS
    return {"used": round(min(float(limit), used), 1), "limit": limit}


def _usage(tats: dict[str, float], now_ms: float, key_id: str | None, limits: Limits
           ) -> dict[str, Any]:
    return {kind: in_use(tats.get(layout.limiter(key_id, kind)), now_ms, getattr(limits, kind))
            for kind in ("rpm", "tpm")}


async def overview(accounts: Accounts, store: Store, now_s: float | None = None
                   ) -> dict[str, Any]:
    now_s = time.time() if now_s is None else now_s
    names = await accounts.team_names()
    teams = []
    for name in names:
        policy = await accounts.get_team(name)
        if policy is None:
            continue
        held = await store.hgetall(layout.budget(name))
        now_ms, tats = await store.limiter_tats(name)
        keys = []
        for record in await accounts.keys(name):
            limits = record.limits if record.limits is not None else policy.key_limits
            keys.append({**record.public(), "effective_limits": limits.to_dict(),
                         "spend": balance(held, f"k:{record.id}:", record.budget, now_s),
                         "usage": _usage(tats, now_ms, record.id, limits)})
        teams.append({**policy.to_dict(), "spend": balance(held, "", policy.budget, now_s),
                      "usage": _usage(tats, now_ms, None, policy.limits), "keys": keys})
    since = day(now_s - (DAYS - 1) * 86400)
    daily = await ledger.rollups(store, [*names, ANONYMOUS_TEAM], since=since,
                                 by=("team", "day"))
    return {"teams": teams, "daily": daily, "since": since, "today": day(now_s)}
