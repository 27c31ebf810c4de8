"""An incident, end to end: one of two providers goes hard down (a 503 storm, then
connection refused, then hanging) under a steady stream of requests from 8 concurrent
clients, then recovers. Clients must not notice; the circuit must open within a second;
traffic must return to the provider after recovery. The added P99 is printed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from selfhost.sim import Faults, SimProfile, Simulator, ThreadedSim
from tests.support.load import Clients
from tests.support.procs import Gateway, free_port

CLIENTS = 8
MESSAGES: Any = [{"role": "user", "content": "Status report please"}]
PROFILE = SimProfile.named("instant", base_ttft_ms=5.0)


@dataclass
class Sample:
    started: float
    latency_s: float
    status: int
    deployment: str | None


class SteadyLoad(Clients[Sample]):
    """`CLIENTS` threads, each sending one non-streamed request after another."""

    def __init__(self, url: str) -> None:
        super().__init__(CLIENTS)
        self.url = url

    def client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.done.is_set():
                started = time.monotonic()
                try:
                    r = client.post("/v1/chat/completions", json={
                        "model": "m", "messages": MESSAGES, "max_tokens": 4})
                    status, dep = r.status_code, r.headers.get("x-turnout-deployment")
                except httpx.HTTPError:
                    status, dep = 0, None
                self.record(Sample(started, time.monotonic() - started, status, dep))

    def between(self, start: float, end: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.results if start <= s.started < end]

    def served_by_since(self, deployment: str, since: float) -> bool:
        with self.lock:
            return any(s.deployment == deployment and s.started >= since for s in self.results)


def p99(samples: list[Sample]) -> float:
    values = sorted(s.latency_s for s in samples)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def circuit(gw: Gateway, dep: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(gw.url + "/debug/failover").json()["circuits"].get(dep, {})
    return found


def until(predicate: Any, timeout: float) -> float:
    """Seconds until the gateway reached a state on its own schedule (fails after timeout)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - started


def test_provider_outage_is_invisible_to_clients(tmp_path: Path) -> None:
    port_a = free_port()
    storm = Simulator(PROFILE, seed=1)
    with ThreadedSim(Simulator(PROFILE, seed=2)) as sim_b:
        sim_a = ThreadedSim(storm, port=port_a).start()
        gw = Gateway({
            "server": {"timeouts": {"connect_s": 1, "first_token_s": 1, "idle_s": 1,
                                    "total_s": 1}},
            "providers": [{"name": "a", "base_url": f"http://127.0.0.1:{port_a}/v1"},
                          {"name": "b", "base_url": sim_b.url + "/v1"}],
            "routing": {"policy": "round-robin"},
            "failover": {"breaker": {"cooldown_s": 0.5, "health_check_interval_s": 0.1,
                                     "health_check_timeout_s": 0.3}},
            "models": {"m": {"deployments": [{"target": "a", "model": "x"},
                                             {"target": "b", "model": "x"}]}},
        }, tmp_path)
        try:
            with SteadyLoad(gw.url) as load:
                t0 = time.monotonic()
                time.sleep(1.0)  # steady traffic on both providers before the incident

                storm.faults = Faults(rate_503=1.0)
                t_storm = time.monotonic()
                open_after = until(lambda: circuit(gw, "a/x").get("state") == "open", 1.0)
                time.sleep(1.0)

                sim_a.stop()  # connection refused
                time.sleep(1.0)

                hang = Simulator(PROFILE, seed=3, faults=Faults(rate_hang=1.0))
                sim_a = ThreadedSim(hang, port=port_a).start()
                time.sleep(1.0)

                t_recovered = time.monotonic()
                hang.faults = Faults()
                back_after = until(lambda: load.served_by_since("a/x", t_recovered), 10.0)
                time.sleep(0.5)
                t_end = time.monotonic()

            samples = load.between(t0, t_end)
            errors = [s for s in samples if s.status != 200]
            baseline, incident = load.between(t0, t_storm), load.between(t_storm, t_recovered)
            state = circuit(gw, "a/x")
            print(f"\noutage: {len(samples)} requests from {CLIENTS} clients, "
                  f"{len(errors)} client-visible errors; circuit open after "
                  f"{open_after * 1000:.0f} ms; traffic back {back_after:.2f} s after recovery;"
                  f" P99 baseline {p99(baseline) * 1000:.1f} ms, during the incident "
                  f"{p99(incident) * 1000:.1f} ms (+{(p99(incident) - p99(baseline)) * 1000:.1f}"
                  f" ms); breaker a/x: {state}")
            assert errors == []
            assert open_after < 1.0
            assert state["state"] == "closed" and state["opened_total"] >= 1
            assert {s.deployment for s in incident} == {"b/x"}  # nothing came back from a
            assert storm.stats.by_status.get(200, 0) > 0 and hang.stats.by_status[200] > 0
        finally:
            gw.stop()
            sim_a.stop()
