"""Pool membership (static and DNS), health probes and /metrics scrapes, for real:
a DNS server on loopback, simulators on 127.0.0.x, the gateway in a subprocess."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from selfhost.pool import parse_vllm_metrics
from selfhost.sim import Faults, Simulator, ThreadedSim
from tests.support.dns import LoopbackDNS
from tests.support.procs import Gateway, free_port

CURRENT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 400.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
"""
OLDER = """vllm:num_requests_running{model_name="m"} 2.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:gpu_prefix_cache_queries_total{model_name="m"} 10.0
vllm:gpu_prefix_cache_hits_total{model_name="m"} 5.0
"""


def test_parse_current_and_older_vllm_names() -> None:
    m = parse_vllm_metrics(CURRENT)
    assert (m.running, m.waiting, m.kv_usage) == (4.0, 5.0, 0.25)  # summed over engines
    assert (m.prefix_queries, m.prefix_hits) == (1000.0, 400.0)
    m = parse_vllm_metrics(OLDER)
    assert (m.running, m.waiting, m.kv_usage, m.prefix_hits) == (2.0, 0.0, 0.5, 5.0)
    assert parse_vllm_metrics("garbage\nvllm:num_requests_running nan-ish\n").running == 0


@pytest.fixture
def dns() -> Iterator[LoopbackDNS]:
    server = LoopbackDNS()
    yield server
    server.stop()


def deployments_seen(gw: Gateway, n: int) -> Counter[str]:
    client = OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    return Counter(client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}]).headers["x-turnout-deployment"]
        for _ in range(n))


def until(predicate: object, timeout: float = 10.0) -> None:
    """Poll a condition the gateway reaches on its own schedule (DNS refresh, probes)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_dns_discovery_follows_a_records(dns: LoopbackDNS, tmp_path: Path) -> None:
    port = free_port()
    a, b = Simulator("instant"), Simulator("instant")
    with ThreadedSim(a, host="127.0.0.2", port=port), ThreadedSim(b, host="127.0.0.3", port=port):
        dns.set("vllm.pool.test", ["127.0.0.2", "127.0.0.3"])
        gw = Gateway({
            "routing": {"policy": "least-loaded"},
            "pools": [{"name": "gpu", "endpoints": [f"dns://vllm.pool.test:{port}"],
                       "resolver": dns.address, "dns_interval_s": 0.1}],
            "models": {"m": {"deployments": [{"target": "gpu", "model": "x"}]}},
        }, tmp_path)
        try:
            seen = deployments_seen(gw, 10)
            assert seen == {f"gpu/127.0.0.2:{port}": 5, f"gpu/127.0.0.3:{port}": 5}
            dns.set("vllm.pool.test", ["127.0.0.3"])  # a pod went away
            until(lambda: set(deployments_seen(gw, 2)) == {f"gpu/127.0.0.3:{port}"})
            before = a.stats.requests_total
            assert deployments_seen(gw, 6) == {f"gpu/127.0.0.3:{port}": 6}
            assert a.stats.requests_total == before
            assert "pool gpu members" in gw.logs()
        finally:
            gw.stop()


def test_unhealthy_replica_is_skipped(tmp_path: Path) -> None:
    sick, well = Simulator("instant"), Simulator("instant")
    with ThreadedSim(sick, well) as sims:
        gw = Gateway({
            "routing": {"policy": "round-robin"},
            "pools": [{"name": "gpu", "endpoints": sims.urls, "probe_interval_s": 0.1}],
            "models": {"m": {"deployments": [{"target": "gpu", "model": "x"}]}},
        }, tmp_path)
        try:
            assert len(deployments_seen(gw, 4)) == 2
            sick.faults = Faults(unhealthy=True)  # /health answers 503, as a dead vLLM engine
            until(lambda: len(deployments_seen(gw, 2)) == 1)
            before = sick.stats.requests_total
            deployments_seen(gw, 6)
            assert sick.stats.requests_total == before
        finally:
            gw.stop()


def test_slow_replica_loses_traffic(tmp_path: Path) -> None:
    slow, fast = Simulator("fast-gpu", seed=1), Simulator("fast-gpu", seed=2)
    with ThreadedSim(slow, fast) as sims:
        gw = Gateway({
            "routing": {"policy": "slo-cost", "slo_ttft_ms": 300},
            "pools": [{"name": "gpu", "endpoints": sims.urls}],
            "models": {"m": {"deployments": [{"target": "gpu", "model": "x"}]}},
        }, tmp_path)
        client = OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        def stream_once() -> str:
            with client.chat.completions.with_streaming_response.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                    max_tokens=2) as resp:
                for _ in resp.iter_lines():
                    pass
                return resp.headers["x-turnout-deployment"]

        try:
            warm = Counter(stream_once() for _ in range(20))
            assert len(warm) == 2 and min(warm.values()) >= 5  # both take traffic
            slow.faults.extra_ttft_ms = 600  # one replica turns slow: TTFT > the 300 ms SLO
            after = [stream_once() for _ in range(30)]
            slow_id = sims.urls[0].split("://")[1]
            to_slow = sum(d.endswith(slow_id) for d in after)
            # Routing learns from the first slow answer(s), then keeps clear of it.
            assert to_slow <= 3, after
            assert not any(d.endswith(slow_id) for d in after[10:])
        finally:
            gw.stop()
