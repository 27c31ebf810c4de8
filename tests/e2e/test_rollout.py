"""Rollouts lose nothing (issue #17 part 5): SIGTERM drains a gateway, SIGKILL loses only
what was in flight on it.

A SIGTERMed gateway answers /readyz 503, refuses new connections, lets the requests and
streams it holds finish within server.drain_timeout_s, ends a stream that outlasts it
with the in-stream error event (not a truncated body), gives its leases back, settles
everything and exits 0. Three replicas (2 workers each, one Redis, a DNS-discovered
pool) behind a client that spreads load and moves on from a refused connection, as a
load balancer does: one replica SIGTERMed mid-run costs no request, one SIGKILLed costs
only its own requests in flight, and the ledger and the budget stay exact (its
reservations lapse by their TTL).

Each prints its figures (streams, completed, failed by replica, refusals, seconds from
SIGTERM to exit, ledger events vs successes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.store import layout
from selfhost.sim import SimProfile, Simulator, ThreadedSim
from tests.support.accounts import EXACT_MESSAGES, auth, eventually, new_key
from tests.support.dns import LoopbackDNS
from tests.support.load import Clients
from tests.support.procs import Gateway, RedisServer, free_port

KEY = new_key()
TEAM = "rollout"
TTL_S = 10  # reservations lapse after this (leases need >= total_s + 6 s)
TOKENS = 10  # every answer's completion tokens; at $2 per 1M output tokens:
COST_NANOS = 20_000  # what each costs (input is free)


@dataclass
class Stream:
    """One streamed chat completion as a client saw it."""

    replica: int = -1
    started: float = 0.0
    ended: float = 0.0
    chunks: int = 0  # tokens of content
    done: bool = False  # `data: [DONE]` came
    error: str | None = None  # the in-stream error event's code, or the client's exception
    request_id: str = ""
    first: threading.Event = field(default_factory=threading.Event)


def stream(http: httpx.Client, url: str, out: Stream, max_tokens: int = TOKENS) -> None:
    """Read one stream to its end into `out`; a connection refused raises (nothing sent)."""
    body = {"model": "m", "messages": EXACT_MESSAGES, "max_tokens": max_tokens,
            "stream": True}
    out.request_id = f"roll-{os.urandom(6).hex()}"
    headers = {**auth(KEY), "x-request-id": out.request_id}
    out.started = time.monotonic()
    with http.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
        try:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out.done = True
                    continue
                event = orjson.loads(line[6:])
                if "error" in event:
                    out.error = event["error"]["code"]
                elif event["choices"] and event["choices"][0]["delta"].get("content"):
                    out.chunks += 1  # a token
                    out.first.set()
        except httpx.HTTPError as err:  # the body broke off (a truncated chunked body)
            out.error = type(err).__name__
        finally:
            out.ended = time.monotonic()


@pytest.fixture(scope="module")
def pool() -> Iterator[tuple[LoopbackDNS, int]]:
    """Two simulated vLLM replicas behind a DNS name (a headless Service), 50 ms a token."""
    dns, port = LoopbackDNS(), free_port()
    profile = SimProfile.named("instant", itl_ms=50.0)
    with ThreadedSim(Simulator(profile), host="127.0.0.2", port=port), \
            ThreadedSim(Simulator(profile), host="127.0.0.3", port=port):
        dns.set("vllm.rollout.test", ["127.0.0.2", "127.0.0.3"])
        yield dns, port
    dns.stop()


def config(redis_url: str, pool: tuple[LoopbackDNS, int], drain_s: int,
           leases: bool = True, **server: Any) -> dict[str, Any]:
    dns, port = pool
    return {
        "server": {"drain_timeout_s": drain_s, "timeouts": {"total_s": 4}, **server},
        "redis": {"url": redis_url},
        "pools": [{"name": "gpu", "endpoints": [f"dns://vllm.rollout.test:{port}"],
                   "resolver": dns.address}],
        "models": {"m": {"deployments": [
            {"target": "gpu", "model": "m", "price": {"input": 0, "output": 2.0}}]}},
        "teams": [{"name": TEAM, "budget": {"usd": 1000, "period": "daily"},
                   "keys": [{"id": "k", "key": KEY}]}],
        "admission": {"reservation_ttl_s": TTL_S, "leases": leases},
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def events(store: RedisServer) -> list[dict[str, Any]]:
    with redis.Redis.from_url(store.url) as r:
        return [orjson.loads(f[b"e"]) for _, f in r.xrange(layout.events(TEAM))]


def budget(store: RedisServer) -> dict[str, bytes]:
    with redis.Redis.from_url(store.url) as r:
        return {k.decode(): v for k, v in r.hgetall(layout.budget(TEAM)).items()}


def refused(port: int) -> bool:
    """A new connection is refused; one accepted must be answered or closed within 2 s
    (never left hanging)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionRefusedError:
        return True
    with s:
        s.settimeout(2)
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            s.recv(1024)  # an answer, or b"" (closed): either way not hanging
    return False


def test_sigterm_drains_streams_cuts_the_late_one_cleanly_and_exits_0(
        store: RedisServer, pool: tuple[LoopbackDNS, int], tmp_path: Path) -> None:
    ops_port = free_port()
    gw = Gateway(config(store.url, pool, drain_s=3, ops_port=ops_port), tmp_path)
    short = [Stream() for _ in range(4)]  # 10 tokens: 0.5 s, well inside the drain
    long = [Stream() for _ in range(2)]  # 400 tokens: 20 s, past it
    try:
        with httpx.Client(timeout=30) as http:
            threads = [threading.Thread(target=stream, args=(http, gw.url, s))
                       for s in short] + [
                threading.Thread(target=stream, args=(http, gw.url, s, 400)) for s in long]
            for t in threads:
                t.start()
            assert all(s.first.wait(10) for s in short + long)  # all are under way
            os.kill(gw.proc.pid, signal.SIGTERM)
            signalled = time.monotonic()
            ready = f"http://127.0.0.1:{ops_port}/readyz"
            eventually(lambda: http.get(ready).status_code == 503, timeout=5)
            assert http.get(ready).json() == {"status": "draining"}
            eventually(lambda: refused(gw.port), timeout=5)
            for t in threads:
                t.join(30)
        assert gw.proc.wait(10) == 0  # a drained gateway's exit is a success
        exit_s = time.monotonic() - signalled  # (seen once the streams had ended)
    finally:
        gw.stop()
    completed = [s for s in short + long if s.done and s.error is None]
    failed = [s for s in short + long if not (s.done and s.error is None)]
    recorded = {e["request_id"]: e for e in events(store)}
    print(f"\nrollout SIGTERM: {len(short + long)} streams, {len(completed)} completed,"
          f" failed on its one replica {dict(Counter(s.error for s in failed))} (the last"
          f" cut {max(s.ended for s in long) - signalled:.2f}s after SIGTERM),"
          f" exit seen {exit_s:.2f}s after SIGTERM; {len(recorded)} ledger events"
          f" ({dict(Counter(e['status'] for e in recorded.values()))} by status) for"
          f" {len(completed)} successes")
    for s in short:
        assert (s.done, s.error, s.chunks) == (True, None, TOKENS), s
    for s in long:
        # Ended by the documented error event, near the drain's end (1 s before it).
        assert (s.done, s.error) == (False, "shutting_down"), s
        assert 0 < s.chunks < 400
        assert s.ended - signalled < 3
    logs = gw.logs()
    assert "Traceback" not in logs and "CancelledError" not in logs
    # Everything settled: one event each, the cut ones billed for what they delivered.
    assert set(recorded) == {s.request_id for s in short + long}
    assert {recorded[s.request_id]["status"] for s in short} == {200}
    assert {recorded[s.request_id]["status"] for s in long} == {503}
    spent = budget(store)
    assert spent["reserved"] == b"0", spent  # its leases were given back
    assert int(spent["spent"]) == sum(round(e["cost_usd"] * 1e9) for e in recorded.values())


class Spread(Clients[Stream]):
    """Client threads that stream through a list of replicas in turn, moving to the next
    one when a connection is refused (as a load balancer does); nothing else is retried."""

    def __init__(self, urls: list[str], clients: int = 6) -> None:
        super().__init__(clients)
        self.urls = urls
        self.refusals = 0
        self._next = 0

    def _replica(self) -> int:
        with self.lock:
            self._next += 1
            return self._next % len(self.urls)

    def client(self, index: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.done.is_set():
                out = Stream(replica=self._replica())
                try:
                    stream(http, self.urls[out.replica], out)
                except httpx.ConnectError:
                    with self.lock:
                        self.refusals += 1
                    continue
                except httpx.HTTPError as err:  # broke before the response's head
                    out.error, out.ended = type(err).__name__, time.monotonic()
                self.record(out)


def test_three_replicas_one_sigtermed_one_sigkilled(
        store: RedisServer, pool: tuple[LoopbackDNS, int], tmp_path: Path) -> None:
    replicas = [Gateway(config(store.url, pool, drain_s=10), tmp_path, workers=2)
                for _ in range(3)]
    drained, killed, last = replicas
    try:
        with Spread([g.url for g in replicas]) as load:
            load.wait_for(60)
            os.kill(drained.proc.pid, signal.SIGTERM)  # a rollout: the pod's PID 1 only
            sigterm = time.monotonic()
            assert drained.proc.wait(15) == 0
            exit_s = time.monotonic() - sigterm
            seen = len(load.results)
            load.wait_for(seen + 30)
            kill_from = time.monotonic()
            os.killpg(killed.proc.pid, signal.SIGKILL)  # the whole pod, at once
            killed.proc.wait(5)
            eventually(lambda: refused(killed.port), timeout=5)  # its workers gone too
            kill_to = time.monotonic()
            seen = len(load.results)
            load.wait_for(seen + 30)
        last.stop()  # its leases given back
    finally:
        for g in replicas:
            g.stop()
    results = load.results
    failed = [s for s in results if not (s.done and s.error is None)]
    ok = {s.request_id for s in results if s.done and s.error is None}
    recorded = events(store)
    paid = {e["request_id"] for e in recorded if e["status"] == 200}
    print(f"\nrollout 3 replicas: {len(results)} streams, {len(ok)} completed, failed by"
          f" replica {dict(Counter(s.replica for s in failed))}, {load.refusals} refusals,"
          f" SIGTERMed replica exited {exit_s:.2f}s after SIGTERM; {len(recorded)} ledger"
          f" events ({len(paid)} paid) for {len(ok)} successes")
    drained_ones = [s for s in results if s.replica == 0 and s.started < sigterm]
    assert drained_ones and all(s.done and s.error is None for s in drained_ones)
    # Only requests in flight on the killed replica when it died failed.
    assert all(s.replica == 1 and s.started < kill_to and s.ended >= kill_from
               for s in failed), failed
    assert load.refusals > 0  # the client did meet closed replicas (and moved on)
    for g in (drained, last):
        assert "Traceback" not in g.logs()
    # The ledger: an event for every success, none twice; a killed request may have been
    # settled just before its client saw the connection go.
    ids = [e["request_id"] for e in recorded]
    assert len(ids) == len(set(ids)), "a request was recorded twice"
    assert ok <= paid and paid - ok <= {s.request_id for s in failed}
    assert int(budget(store)["spent"]) == COST_NANOS * len(paid)
    # What the killed replica held lapses by its TTL; the next admission purges it.
    time.sleep(TTL_S + 0.5)  # (the TTL itself is what is being checked)
    probe = Gateway(config(store.url, pool, drain_s=1, leases=False), tmp_path)
    try:
        r = httpx.post(f"{probe.url}/v1/chat/completions", headers=auth(KEY), json={
            "model": "m", "messages": EXACT_MESSAGES, "max_tokens": TOKENS})
        assert r.status_code == 200
    finally:
        probe.stop()
    left = budget(store)
    assert left["reserved"] == b"0", left
    assert not [f for f in left if f.startswith("r:")], left
    assert int(left["spent"]) == COST_NANOS * (len(paid) + 1)
