"""Budgets and RPM/TPM limits are exact across processes: 4 gateway workers sharing a real
Redis, 200 concurrent requests, a simulator counting what reaches it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.store import layout
from selfhost.sim import Simulator, ThreadedSim
from tests.support.accounts import (
    EXACT_PROMPT_TOKENS,
    burst,
    eventually,
    new_key,
    suffix,
)
from tests.support.procs import Gateway
from tests.support.stores import inspector

S = suffix()
TEAMS = {name: f"{name}-{S}" for name in ("budget", "rpm", "tpm", "reset")}
KEYS = {name: new_key() for name in TEAMS}
ADMIN = new_key()
COST_NANOS = 10_000  # 5 output tokens at $2 per 1M (input is free): reserved == settled
FITS = 37
CONCURRENT = 200


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("instant")) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(sim: ThreadedSim, redis_backend: tuple[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    limits: dict[str, dict[str, Any]] = {
        "budget": {"budget": {"usd": FITS * COST_NANOS / 1e9, "period": "daily"}},
        "rpm": {"key_limits": {"rpm": 10}},  # one request per 6 s after the burst
        "tpm": {"limits": {"tpm": 80}},  # 8 requests of 10 tokens; one per 7.5 s after
        "reset": {"key_limits": {"rpm": 20}},  # one request per 3 s after the burst
    }
    config = {
        "redis": {"url": redis_backend[1]},
        "auth": {"admin_key": ADMIN},
        "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
        "models": {"priced": {"deployments": [
            {"target": "sim", "model": "m", "price": {"input": 0, "output": 2.0}}]}},
        "teams": [{"name": TEAMS[n], "keys": [{"id": n, "key": KEYS[n]}], **limits[n]}
                  for n in TEAMS],
    }
    gw = Gateway(config, tmp_path_factory.mktemp("gw"), workers=4)
    yield gw
    gw.stop()


def statuses(responses: list[httpx.Response]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in responses:
        out[r.status_code] = out.get(r.status_code, 0) + 1
    return out


def test_budget_admits_exactly_what_fits(gateway: Gateway, sim: ThreadedSim,
                                         redis_backend: tuple[str, str]) -> None:
    ledger = inspector(*redis_backend)
    budget_key = layout.budget(TEAMS["budget"])
    peak = {"committed": 0, "spent": 0}
    done = threading.Event()

    def watch() -> None:  # spend + reservations sampled all through the burst
        while not done.wait(0.002):
            h = ledger.hgetall(budget_key)
            spent, reserved = int(h.get(b"spent", 0)), int(h.get(b"reserved", 0))
            peak["committed"] = max(peak["committed"], spent + reserved)
            peak["spent"] = max(peak["spent"], spent)

    watcher = threading.Thread(target=watch)
    before = sim.sim.stats.requests_total
    watcher.start()
    responses = asyncio.run(burst(gateway.url, KEYS["budget"], CONCURRENT))
    assert statuses(responses) == {200: FITS, 429: CONCURRENT - FITS}
    assert sim.sim.stats.requests_total - before == FITS  # refused ones never went upstream
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert {(e["code"], e["type"]) for e in refused} == {("insufficient_quota",
                                                          "insufficient_quota")}

    admin = {"authorization": f"Bearer {ADMIN}"}
    team = eventually(lambda: (t := httpx.get(f"{gateway.url}/admin/teams/{TEAMS['budget']}",
                                              headers=admin).json())["spend"]["reserved_usd"] == 0
                      and t)
    done.set()
    watcher.join()
    budget = FITS * COST_NANOS
    assert team["spend"]["spent_usd"] == budget / 1e9 == team["spend"]["budget_usd"]
    assert peak["committed"] <= budget and peak["spent"] <= budget
    assert int(ledger.hget(budget_key, "spent") or 0) == budget
    events = httpx.get(f"{gateway.url}/admin/events", headers=admin,
                       params={"team": TEAMS["budget"], "format": "json"}).json()["data"]
    assert len(events) == FITS
    assert sum(round(e["cost_usd"] * 1e9) for e in events) == budget
    assert {(e["completion_tokens"], e["estimated"]) for e in events} == {(5, False)}
    ledger.close()


def test_rpm_exact_across_workers(gateway: Gateway) -> None:
    responses = asyncio.run(burst(gateway.url, KEYS["rpm"], CONCURRENT))
    assert statuses(responses) == {200: 10, 429: CONCURRENT - 10}
    ok = [r for r in responses if r.status_code == 200]
    # Each admission saw a distinct state of the one shared limiter.
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == list(range(10))
    assert {r.headers["x-ratelimit-limit-requests"] for r in ok} == {"10"}
    refused = [r for r in responses if r.status_code == 429]
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
    assert all(1 <= int(r.headers["retry-after"]) <= 6 for r in refused)
    assert {r.headers["x-ratelimit-remaining-requests"] for r in refused} == {"0"}


def test_tpm_exact_across_workers(gateway: Gateway) -> None:
    responses = asyncio.run(burst(gateway.url, KEYS["tpm"], CONCURRENT))
    assert statuses(responses) == {200: 8, 429: CONCURRENT - 8}
    per_request = EXACT_PROMPT_TOKENS + 5
    ok = [r for r in responses if r.status_code == 200]
    assert sorted(int(r.headers["x-ratelimit-remaining-tokens"]) for r in ok) == \
        list(range(0, 80, per_request))
    assert all(r.json()["usage"]["total_tokens"] == per_request for r in ok)
    assert {r.json()["error"]["type"] for r in responses if r.status_code == 429} == {"tokens"}


def test_capacity_returns_at_the_advertised_reset(gateway: Gateway) -> None:
    key = KEYS["reset"]
    responses = asyncio.run(burst(gateway.url, key, 25))
    assert statuses(responses) == {200: 20, 429: 5}
    probe = asyncio.run(burst(gateway.url, key, 1))[0]
    assert probe.status_code == 429
    wait_ms = int(probe.headers["retry-after-ms"])
    assert 0 < wait_ms <= 3000  # one emission interval: 60 s / 20
    asyncio.run(asyncio.sleep(wait_ms / 1000 + 0.05))  # the reset the server advertised
    after = asyncio.run(burst(gateway.url, key, 3))
    assert statuses(after) == {200: 1, 429: 2}
    ok = next(r for r in after if r.status_code == 200)
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert ok.headers["x-ratelimit-reset-requests"] in ("59s", "1m0s") or \
        ok.headers["x-ratelimit-reset-requests"].startswith("59.")

