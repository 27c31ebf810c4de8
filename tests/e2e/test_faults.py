"""Fault injection, short versions of the outage drills: a gateway with 2 workers, real
Redis, upstream simulators in their own processes, 8 paced clients. After each fault the
ledger's invariants are checked:

- exactly one usage event per 200 the clients got (by request id, none twice);
- the team's spend is the sum of what those requests cost (each costs the same);
- `reserved` returns to 0 (a lost lease grant's part lapses by its TTL, then the next
  admission purges it);
- no client error where a healthy alternative existed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.store import layout
from tests.support.accounts import EXACT_MESSAGES, auth, eventually, new_key
from tests.support.load import Clients
from tests.support.procs import REPO, Gateway, RedisServer, free_port, stop, wait_http

KEY = new_key()
TEAM = "drill"
COST_NANOS = 10_000  # 5 output tokens at $2 per 1M (input free): every 200 costs this
TTL_S = 10  # reservations lapse after this (leases need >= total_s + 6 s)
TOTAL_S = 4


class Upstream:
    """A simulator in a process of its own, so it can be stopped, killed and restarted."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"sim-{self.port}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "sim", "--profile", "instant",
                 "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                start_new_session=True)
        wait_http(self.url + "/health", self.proc, self.log)

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
        stop(self.proc)


class Load(Clients[tuple[str, int, str | None, float]]):
    """Paced clients, each sending chat requests with its own request ids until stopped;
    each result: request id, status, error code, seconds."""

    def __init__(self, url: str, clients: int = 8, pace_s: float = 0.02) -> None:
        super().__init__(clients)
        self.url, self.pace_s, self.clients = url, pace_s, clients
        self.during = slice(0, 0)  # the results of requests that overlapped the fault

    def client(self, index: int) -> None:
        body = {"model": "m", "messages": EXACT_MESSAGES, "max_tokens": 5}
        with httpx.Client(base_url=self.url, timeout=30) as http:
            n = 0
            while not self.done.is_set():
                rid = f"drill-{index}-{n}-{os.urandom(3).hex()}"
                n += 1
                started = time.monotonic()
                try:
                    r = http.post("/v1/chat/completions", json=body,
                                  headers={**auth(KEY), "x-request-id": rid})
                    code = r.json()["error"]["code"] if r.status_code != 200 else None
                    status = r.status_code
                except httpx.HTTPError as err:
                    status, code = 0, type(err).__name__
                self.record((rid, status, code, time.monotonic() - started))
                self.done.wait(self.pace_s)

    def ok(self) -> set[str]:
        return {rid for rid, status, _, _ in self.results if status == 200}

    def summary(self, drill: str, events: int) -> None:
        """One line per drill (`pytest -s` shows it)."""
        errors: dict[str, int] = {}
        for _, status, code, _ in self.results:
            if status != 200:
                errors[f"{status} {code}"] = errors.get(f"{status} {code}", 0) + 1
        worst = max((seconds for *_, seconds in self.results[self.during]), default=0.0)
        print(f"\n{drill}: {len(self.results)} requests, {len(self.ok())} ok, errors {errors},"
              f" {events} ledger events, max latency during the fault {worst:.2f}s")


def config(redis_url: str, upstreams: list[Upstream], policy: str = "fail-open",
           leases: bool = True) -> dict[str, Any]:
    return {
        "server": {"timeouts": {"first_token_s": 1, "total_s": TOTAL_S}},
        "redis": {"url": redis_url},
        "providers": [{"name": f"up{i}", "base_url": u.url + "/v1"}
                      for i, u in enumerate(upstreams)],
        "models": {"m": {"deployments": [
            {"target": f"up{i}", "model": "m", "price": {"input": 0, "output": 2.0}}
            for i in range(len(upstreams))]}},
        "teams": [{"name": TEAM, "budget": {"usd": 1000, "period": "daily"},
                   "keys": [{"id": "k", "key": KEY}]}],
        "admission": {"on_store_outage": policy, "fallback": {"rpm": 100_000},
                      "reservation_ttl_s": TTL_S, "leases": leases},
        "failover": {"retry_budget": {"ratio": 1.0, "min_per_s": 1000}},
    }


def check_ledger(server: RedisServer, load: Load, upstreams: list[Upstream],
                 tmp_path: Path) -> int:
    """The invariants, once the gateway has stopped (its leases given back); the number of
    usage events recorded."""
    ok = load.ok()
    ledger = redis.Redis.from_url(server.url)
    try:
        def events() -> list[dict[str, Any]]:
            return [orjson.loads(f[b"e"]) for _, f in ledger.xrange(layout.events(TEAM))]

        eventually(lambda: {e["request_id"] for e in events() if e["status"] == 200} >= ok)
        recorded = events()
        ids = [e["request_id"] for e in recorded]
        assert len(ids) == len(set(ids)), "a request was recorded twice"
        assert {e["request_id"] for e in recorded if e["status"] == 200} == ok
        paid = sum(e["cost_usd"] > 0 for e in recorded)
        assert paid == len(ok)
        assert int(ledger.hget(layout.budget(TEAM), "spent") or 0) == COST_NANOS * len(ok)
        # What lost lease grants left lapses by its TTL; the next admission purges it.
        time.sleep(TTL_S + 0.5)  # (the TTL itself is what is being checked)
        probe = Gateway(config(server.url, upstreams, leases=False), tmp_path)
        try:
            r = httpx.post(f"{probe.url}/v1/chat/completions", headers=auth(KEY), json={
                "model": "m", "messages": EXACT_MESSAGES, "max_tokens": 5})
            assert r.status_code == 200
        finally:
            probe.stop()
        budget = {k.decode(): v for k, v in ledger.hgetall(layout.budget(TEAM)).items()}
        assert budget["reserved"] == b"0", budget
        assert not [f for f in budget if f.startswith("r:")], budget
    finally:
        ledger.close()
    return len(recorded)


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[list[Upstream]]:
    ups = [Upstream(tmp_path), Upstream(tmp_path)]
    yield ups
    for u in ups:
        u.stop()


def drill(tmp_path: Path, upstreams: list[Upstream], fault: Callable[[RedisServer], RedisServer],
          policy: str = "fail-open") -> tuple[Load, RedisServer]:
    server = RedisServer(tmp_path, persist=True)
    gw = Gateway(config(server.url, upstreams, policy), tmp_path, workers=2)
    try:
        with Load(gw.url) as load:
            load.wait_for(100)
            before = len(load.results)
            server = fault(server)
            seen = len(load.results)
            # A request in flight when the fault ended is among each client's next result.
            load.during = slice(before, seen + load.clients)
            load.wait_for(seen + 100)
    finally:
        gw.stop()
    assert KEY not in gw.logs()
    return load, server


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
def test_redis_stalled_under_load(policy: str, tmp_path: Path,
                                  upstreams: list[Upstream]) -> None:
    def stall(server: RedisServer) -> RedisServer:
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(2)  # the stall's length is the fault injected
        os.kill(server.proc.pid, signal.SIGCONT)
        return server

    load, server = drill(tmp_path, upstreams, stall, policy)
    try:
        codes = {code for _, status, code, _ in load.results if status != 200}
        if policy == "fail-open":
            assert codes == set()  # admitted locally, metered once Redis is back
        else:
            assert codes <= {"store_unavailable"}
        load.summary(f"redis stalled 2 s ({policy})",
                     check_ledger(server, load, upstreams, tmp_path))
    finally:
        server.stop()


def test_redis_killed_and_restarted_under_load(tmp_path: Path,
                                               upstreams: list[Upstream]) -> None:
    def restart(server: RedisServer) -> RedisServer:
        server.kill()
        time.sleep(1)
        return RedisServer(tmp_path, port=server.port, persist=True)  # its data kept (AOF)

    load, server = drill(tmp_path, upstreams, restart)
    try:
        assert {code for _, status, code, _ in load.results if status != 200} == set()
        load.summary("redis killed and restarted",
                     check_ledger(server, load, upstreams, tmp_path))
    finally:
        server.stop()


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_an_upstream_killed_or_hung_under_load(fault: str, tmp_path: Path,
                                               upstreams: list[Upstream]) -> None:
    def upstream_down(server: RedisServer) -> RedisServer:
        if fault == "kill":
            port = upstreams[0].port
            upstreams[0].kill()
            time.sleep(1)
            upstreams[0] = Upstream(tmp_path, port)  # back on the same address
        else:  # SIGSTOP: accepts connections, answers nothing
            upstreams[0].signal(signal.SIGSTOP)
            time.sleep(3)
            upstreams[0].signal(signal.SIGCONT)
        return server

    load, server = drill(tmp_path, upstreams, upstream_down)
    try:
        assert {code for _, status, code, _ in load.results if status != 200} == set()
        if fault == "stop":
            # Every request is answered: the ones on the hung upstream fail over after
            # first_token_s (1 s), and the stalled one stops being chosen meanwhile.
            assert max(seconds for *_, seconds in load.results) < TOTAL_S
        load.summary(f"upstream {'killed' if fault == 'kill' else 'hung'}",
                     check_ledger(server, load, upstreams, tmp_path))
    finally:
        server.stop()
