"""Leases across gateway processes sharing a real Redis: requests are admitted from them
without a round trip; a budget is never exceeded and, once the leases are given back, is
spent to the nano; revocations and policy changes reach every worker before the admin
call returns."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.store import layout
from selfhost.sim import Simulator, ThreadedSim
from tests.support.accounts import EXACT_MESSAGES, auth, burst, eventually, new_key, suffix
from tests.support.procs import Gateway
from tests.support.stores import inspector

S = suffix()
TEAMS = {name: f"{name}-{S}" for name in ("open", "budget", "revoke", "policy", "exact")}
KEYS = {name: new_key() for name in TEAMS}
OTHER_KEY = new_key()  # a second key of team "exact"
ADMIN = new_key()
COST_NANOS = 10_000  # 5 output tokens at $2 per 1M (input free): reserved == settled
FITS = 400  # requests the budget pays for: enough that leases are granted (1/16 >= 4)
BIG = 1_000_000


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("instant")) as s:
        yield s


def team_config(name: str) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "open": {"limits": {"rpm": BIG, "tpm": 100 * BIG}},
        "budget": {"budget": {"usd": FITS * COST_NANOS / 1e9, "period": "daily"}},
        "revoke": {},
        "policy": {"key_limits": {"rpm": BIG}},
        "exact": {"budget": {"usd": FITS * COST_NANOS / 1e9, "period": "daily"}},
    }[name]
    keys = [{"id": name, "key": KEYS[name]}]
    if name == "exact":
        keys.append({"id": "other", "key": OTHER_KEY})
    return {"name": TEAMS[name], "keys": keys, **policy}


@pytest.fixture(scope="module")
def gateway(sim: ThreadedSim, redis_backend: tuple[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "redis": {"url": redis_backend[1]},
        # Changes must not wait for the cache; the revocation test's 401s must not lock
        # this client out of the tests that follow.
        "auth": {"admin_key": ADMIN, "cache_ttl_s": 60, "lockout": {"failures": 0}},
        "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
        "models": {"priced": {"deployments": [
            {"target": "sim", "model": "m", "price": {"input": 0, "output": 2.0}}]}},
        "teams": [team_config(name) for name in TEAMS],
    }
    gw = Gateway(config, tmp_path_factory.mktemp("gw"), workers=4)
    yield gw
    gw.stop()


def lease_admissions(gw: Gateway) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "turnout_lease_admissions_total")


def in_bursts(gw: Gateway, key: str, total: int, size: int) -> list[httpx.Response]:
    out: list[httpx.Response] = []
    for _ in range(total // size):
        out += asyncio.run(burst(gw.url, key, size))
    return out


def put_team(gw: Gateway, name: str, **policy: Any) -> None:
    """Change (or just re-apply) a team's policy: every worker drops its leases and cached
    principals of the team, and gives the leases back, before this returns."""
    r = httpx.put(f"{gw.url}/admin/teams/{TEAMS[name]}", headers=auth(ADMIN), json=policy)
    assert r.status_code == 200, r.text


def test_most_requests_are_admitted_from_leases(gateway: Gateway) -> None:
    # A worker's first requests go to Redis while its lease is granted, and its lease
    # grows with the bursts it sees; then nearly every request is admitted from it.
    warm_up = in_bursts(gateway, KEYS["open"], 200, 20)
    before = lease_admissions(gateway)
    responses = in_bursts(gateway, KEYS["open"], 200, 20)
    in_bursts(gateway, KEYS["open"], 4, 4)  # its settlement syncs the counter past the rest
    assert lease_admissions(gateway) - before >= 180
    assert {r.status_code for r in warm_up + responses} == {200}
    assert {r.headers["x-ratelimit-limit-requests"] for r in responses} == {str(BIG)}
    # What other workers' leases hold counts as used: it is, for everyone else.
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in responses]
    assert min(remaining) >= BIG - 2000 and max(remaining) < BIG, (min(remaining), max(remaining))


def test_a_budget_with_leases_never_overspends_and_is_spent_to_the_nano(
        gateway: Gateway, sim: ThreadedSim, redis_backend: tuple[str, str]) -> None:
    ledger = inspector(*redis_backend)
    budget_key = layout.budget(TEAMS["budget"])
    budget = FITS * COST_NANOS
    peak = {"committed": 0}
    done = threading.Event()

    def watch() -> None:  # spend + reservations (leases' included) all through the bursts
        while not done.wait(0.002):
            h = ledger.hgetall(budget_key)
            peak["committed"] = max(peak["committed"],
                                    int(h.get(b"spent", 0)) + int(h.get(b"reserved", 0)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    upstream_before = sim.sim.stats.requests_total
    leased_before = lease_admissions(gateway)
    admitted = 0
    for _ in range(20):  # until a burst gets nothing: then nothing is held back anywhere
        responses = asyncio.run(burst(gateway.url, KEYS["budget"], 300))
        ok = sum(r.status_code == 200 for r in responses)
        refused = [r.json()["error"]["code"] for r in responses if r.status_code != 200]
        assert set(refused) <= {"insufficient_quota"}
        admitted += ok
        put_team(gateway, "budget", budget={"usd": budget / 1e9, "period": "daily"})
        if ok == 0:
            break
    assert admitted == FITS
    assert sim.sim.stats.requests_total - upstream_before == FITS
    assert lease_admissions(gateway) > leased_before  # leases did admit some of them
    eventually(lambda: int(ledger.hget(budget_key, "reserved") or 0) == 0)
    done.set()
    watcher.join()
    assert int(ledger.hget(budget_key, "spent") or 0) == budget
    assert peak["committed"] <= budget
    ledger.close()


def test_near_its_budget_every_request_that_fits_is_admitted(
        gateway: Gateway, sim: ThreadedSim, redis_backend: tuple[str, str]) -> None:
    """Leases on, 4 workers: half the team's budget spent in small bursts by two of its
    keys (every worker leases shares of the budget for each), then more requests at once
    on one key than the rest pays for: exactly the rest succeed, although the other key's
    leases held part of it when the burst came (a refused worker recalls them)."""
    warm_up = (in_bursts(gateway, KEYS["exact"], FITS // 4, 20)
               + in_bursts(gateway, OTHER_KEY, FITS // 4, 20))
    assert {r.status_code for r in warm_up} == {200}
    upstream_before = sim.sim.stats.requests_total
    responses = asyncio.run(burst(gateway.url, KEYS["exact"], 300))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == FITS // 2, codes.count(200)
    assert {r.json()["error"]["code"] for r in responses if r.status_code != 200} == {
        "insufficient_quota"}
    assert sim.sim.stats.requests_total - upstream_before == FITS // 2
    ledger = inspector(*redis_backend)
    budget_key = layout.budget(TEAMS["exact"])
    eventually(lambda: int(ledger.hget(budget_key, "spent") or 0) == FITS * COST_NANOS)
    eventually(lambda: int(ledger.hget(budget_key, "reserved") or 0) == 0, timeout=20)
    ledger.close()


def chat(gw: Gateway, key: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", headers=auth(key),
                      json={"model": "priced", "messages": EXACT_MESSAGES, "max_tokens": 5})


def test_revocation_stops_a_leased_key_on_every_worker_at_once(gateway: Gateway) -> None:
    before = lease_admissions(gateway)
    assert {r.status_code for r in in_bursts(gateway, KEYS["revoke"], 80, 8)} == {200}
    assert lease_admissions(gateway) > before
    r = httpx.delete(f"{gateway.url}/admin/teams/{TEAMS['revoke']}/keys/revoke",
                     headers=auth(ADMIN))
    assert r.json()["revoked"] is True
    after = asyncio.run(burst(gateway.url, KEYS["revoke"], 40))
    assert {r.status_code for r in after} == {401}


def test_a_policy_change_reaches_every_worker_at_once(gateway: Gateway) -> None:
    first = in_bursts(gateway, KEYS["policy"], 80, 8)  # every worker caches it, leased
    assert {r.headers["x-ratelimit-limit-requests"] for r in first} == {str(BIG)}
    put_team(gateway, "policy", key_limits={"rpm": BIG // 2})
    after = asyncio.run(burst(gateway.url, KEYS["policy"], 40))
    assert {r.headers["x-ratelimit-limit-requests"] for r in after} == {str(BIG // 2)}
