"""Redis fails over under load, behind a running gateway (2 workers, leases on):

- Redis Cluster, a manual failover (`CLUSTER FAILOVER` on the replica of the master that
  holds the team's slot) in the middle of spending a budget: no request admitted twice,
  no overspend, the budget spent to the nano, one ledger event per successful response.
- Redis Cluster from empty: every key of the config put back without a restart.
- Sentinel, the master killed under load: the gateway follows the new master within a
  few seconds; every successful response has its event.

Each prints its figures (requests, errors, time to follow, events vs successes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.store import layout
from selfhost.sim import Simulator, ThreadedSim
from tests.support.accounts import EXACT_MESSAGES, auth, eventually, new_key, suffix
from tests.support.procs import Gateway, RedisCluster, RedisSentinel, command
from tests.support.stores import inspector

ADMIN = new_key()
COST_NANOS = 10_000  # 5 output tokens at $2 per 1M (input free): reserved == settled


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("instant")) as s:
        yield s


def config(url: str, sim: ThreadedSim, team: str, key: str, **policy: Any) -> dict[str, Any]:
    return {
        "redis": {"url": url},
        "auth": {"admin_key": ADMIN, "lockout": {"failures": 0}},
        "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
        "models": {"priced": {"deployments": [
            {"target": "sim", "model": "m", "price": {"input": 0, "output": 2.0}}]}},
        "teams": [{"name": team, "keys": [{"id": "k", "key": key}], **policy}],
    }


@dataclass
class Load:
    """Concurrent clients, each sending one request after another; every answer noted."""

    url: str
    key: str
    statuses: list[tuple[float, int, str]] = field(default_factory=list)  # (t, status, code)
    request_ids: list[str] = field(default_factory=list)  # of the 200s
    _marks: dict[int, asyncio.Event] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return sum(s == 200 for _, s, _ in self.statuses)

    def at(self, successes: int) -> asyncio.Event:
        """Set once that many requests have succeeded."""
        return self._marks.setdefault(successes, asyncio.Event())

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, status, code in self.statuses:
            if status != 200 and code != "insufficient_quota":
                out[f"{status} {code}"] = out.get(f"{status} {code}", 0) + 1
        return out

    async def run(self, clients: int, until: Callable[[], bool]) -> None:
        body = {"model": "priced", "messages": EXACT_MESSAGES, "max_tokens": 5}
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            async def one() -> None:
                while not until():
                    r = await client.post("/v1/chat/completions", json=body,
                                          headers=auth(self.key))
                    code = "" if r.status_code == 200 else r.json()["error"].get("code", "")
                    self.statuses.append((time.monotonic(), r.status_code, code))
                    if r.status_code == 200:
                        self.request_ids.append(r.headers["x-request-id"])
                        for n, mark in self._marks.items():
                            if len(self.request_ids) >= n:
                                mark.set()
                    elif code == "insufficient_quota":
                        await asyncio.sleep(0.01)

            await asyncio.gather(*(one() for _ in range(clients)))


def recall_leases(gw: Gateway, team: str, budget_nanos: int) -> None:
    """Re-apply the team's policy: every worker gives its leases back before this returns."""
    r = httpx.put(f"{gw.url}/admin/teams/{team}", headers=auth(ADMIN),
                  json={"budget": {"usd": budget_nanos / 1e9, "period": "daily"}})
    assert r.status_code == 200, r.text


def ledger_ids(ledger: Any, team: str) -> list[str]:
    rows = ledger.xrange(layout.events(team), "-", "+")
    return [orjson.loads(fields[b"e"])["request_id"] for _, fields in rows]


def test_a_cluster_failover_under_load_loses_and_doubles_nothing(
        sim: ThreadedSim, tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path)
    team, key, fits = "fo-" + suffix(), new_key(), 300
    budget = fits * COST_NANOS
    gw = Gateway(config(cluster.url, sim, team, key,
                        budget={"usd": budget / 1e9, "period": "daily"}), tmp_path, workers=2)
    ledger = inspector("cluster", cluster.url)
    try:
        master = cluster.master_of(layout.budget(team))
        replica = cluster.replica_of(master)
        upstream_before = sim.sim.stats.requests_total
        load = Load(gw.url, key)
        failed_over: list[float] = []

        async def run() -> None:
            async def failover() -> None:
                await load.at(100).wait()  # a third of the budget spent: then fail over
                started = time.monotonic()
                await asyncio.to_thread(cluster.failover, replica)
                failed_over.append(time.monotonic() - started)

            await asyncio.gather(load.run(8, lambda: (bool(failed_over) and load.ok >= fits)
                                          or len(load.statuses) > 5 * fits), failover())

        asyncio.run(run())
        for _ in range(20):  # what leases still hold: recalled, then spent
            recall_leases(gw, team, budget)
            burst = Load(gw.url, key)
            asyncio.run(burst.run(8, lambda b=burst: len(b.statuses) >= 40))  # type: ignore[misc]
            load.statuses += burst.statuses
            load.request_ids += burst.request_ids
            if burst.ok == 0:
                break
        assert cluster.master_of(layout.budget(team)).port == replica.port
        eventually(lambda: int(ledger.hget(layout.budget(team), "reserved") or 0) == 0)
        ids = ledger_ids(ledger, team)
        print(f"\ncluster failover: {len(load.statuses)} requests, {load.ok} ok,"
              f" errors {load.errors()}, failover took {failed_over[0]:.2f}s,"
              f" {len(ids)} events")
        assert load.ok == fits  # exactly what the budget pays for
        assert sim.sim.stats.requests_total - upstream_before == fits  # each went up once
        assert len(set(load.request_ids)) == fits
        assert int(ledger.hget(layout.budget(team), "spent") or 0) == budget  # to the nano
        assert sorted(ids) == sorted(load.request_ids)  # one event per success, no more
        assert load.errors() == {}
    finally:
        ledger.close()
        gw.stop()
        cluster.stop()


def test_a_cluster_that_lost_everything_gets_the_config_back(
        sim: ThreadedSim, tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path)
    team, key = "heal-" + suffix(), new_key()
    gw = Gateway(config(cluster.url, sim, team, key), tmp_path, workers=2)
    body = {"model": "priced", "messages": EXACT_MESSAGES, "max_tokens": 5}
    try:
        chat = lambda: httpx.post(f"{gw.url}/v1/chat/completions",  # noqa: E731
                                  json=body, headers=auth(key)).status_code
        assert chat() == 200
        for node in cluster.live():
            command(node.port, "FLUSHALL")  # (replicas refuse; their masters' reaches them)
        flushed = time.monotonic()
        meanwhile: list[int] = []  # (a worker that cached the key sees it revoked: 401)
        while command(cluster.master_of(layout.team(team)).port, "GET",
                      layout.team(team)) is None:
            assert time.monotonic() - flushed < 10, "the config was not put back"
            meanwhile.append(chat())
        back = time.monotonic() - flushed
        statuses = [chat() for _ in range(20)]
        print(f"\ncluster flushed: config back after {back:.2f}s ({len(meanwhile)} requests"
              f" meanwhile: {meanwhile.count(200)} ok, {meanwhile.count(401)} 401); then"
              f" {statuses.count(200)} of 20 requests ok")
        assert statuses == [200] * 20 and back < 5
    finally:
        gw.stop()
        cluster.stop()


def test_sentinel_master_killed_under_load_is_followed(sim: ThreadedSim,
                                                       tmp_path: Path) -> None:
    sentinel = RedisSentinel(tmp_path)
    team, key = "sen-" + suffix(), new_key()
    gw = Gateway(config(sentinel.url, sim, team, key), tmp_path, workers=2)
    ledger_url = f"redis://127.0.0.1:{sentinel.replica.port}/0"  # the master to be
    try:
        load = Load(gw.url, key)
        killed: list[float] = []

        async def run() -> None:
            async def kill() -> None:
                await load.at(200).wait()
                await asyncio.to_thread(sentinel.master.kill)
                killed.append(time.monotonic())

            def done() -> bool:  # 200 more successes after the kill, or 30 s
                return bool(killed) and (time.monotonic() - killed[0] > 30 or sum(
                    s == 200 for t, s, _ in load.statuses if t > killed[0]) >= 200)

            await asyncio.gather(load.run(4, done), kill())

        asyncio.run(run())
        after = [(t - killed[0], s) for t, s, _ in load.statuses if t > killed[0]]
        first_error = min((t for t, s in after if s != 200), default=0.0)
        last_error = max((t for t, s in after if s != 200), default=0.0)
        ledger = inspector("redis", ledger_url)
        eventually(lambda: ledger.xlen(layout.events(team)) >= load.ok - 5)
        time.sleep(1.0)  # settlement batches still buffered land (nothing to poll for)
        events = set(ledger_ids(ledger, team))
        lost = set(load.request_ids) - events
        print(f"\nsentinel: {len(load.statuses)} requests, {load.ok} ok, errors"
              f" {load.errors()} from {first_error:.2f}s to {last_error:.2f}s after the kill,"
              f" none after; {len(events)} events, {len(lost)} successes without one"
              " (written to the old master, not yet replicated)")
        ledger.close()
        assert last_error < 10  # followed within a few seconds
        assert not events - set(load.request_ids)  # no event without its success
        assert len(lost) <= 5  # at most what asynchronous replication had not sent yet
    finally:
        gw.stop()
        sentinel.stop()
