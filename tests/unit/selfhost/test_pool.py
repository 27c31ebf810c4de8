"""Pool membership (static and DNS), health probes and /metrics scrapes, for real:
a DNS server on loopback, simulators on 127.0.0.x, the gateway in a subprocess."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from gateway.config import ConfigError, parse_config
from gateway.registry import replica_id
from policies.breakers import CircuitState, Pass
from policies.routing.slo_cost import PROBE_GAP_MAX_S, PROBE_GAP_S
from policies.scoreboard import Scoreboard
from selfhost.pool import PoolMonitor, PoolSpec, parse_vllm_metrics
from selfhost.sim import Faults, Simulator, ThreadedSim
from tests.support.dns import LoopbackDNS
from tests.support.inproc import serving
from tests.support.procs import Gateway, free_port
from tests.unit.policies.test_routing import Clock

CURRENT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 400.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 7.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 3.0
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
    assert m.completed == 10.0  # every finished_reason
    m = parse_vllm_metrics(OLDER)
    assert (m.running, m.waiting, m.kv_usage, m.prefix_hits) == (2.0, 0.0, 0.5, 5.0)
    assert m.completed is None
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

        def stream_once() -> tuple[str, str]:
            """Where a request went, and why."""
            with client.chat.completions.with_streaming_response.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                    max_tokens=2) as resp:
                for _ in resp.iter_lines():
                    pass
                return resp.headers["x-turnout-deployment"], resp.headers["x-turnout-route"]

        try:
            warm = Counter(d for d, _ in (stream_once() for _ in range(20)))
            assert len(warm) == 2 and min(warm.values()) >= 5  # both take traffic
            slow.faults.extra_ttft_ms = 600  # one replica turns slow: TTFT > the 300 ms SLO
            after = [stream_once() for _ in range(30)]
            slow_id = sims.urls[0].split("://")[1]
            to_slow = [why for d, why in after if d.endswith(slow_id)]
            # Routing learns from the first slow answer(s), then keeps clear of it but for
            # probes (its sibling meets the SLO at the same price: were it well, it would
            # share the pool's traffic), no more often than slo-cost's schedule.
            assert len([why for why in to_slow if "probing" not in why]) <= 3, after
            assert all("probing" in why for d, why in after[10:] if d.endswith(slow_id))
            shunned = [float(m[1]) for why in to_slow
                       if (m := re.search(r"\(shunned ([0-9.]+)s\)", why))]
            gaps = [b - a for a, b in itertools.pairwise(shunned)]
            assert all(gap >= min(PROBE_GAP_S * 2 ** i, PROBE_GAP_MAX_S) - 0.1  # (rounded)
                       for i, gap in enumerate(gaps)), to_slow
        finally:
            gw.stop()


class Replica:
    """What one replica answers the monitor (a fetch for PoolMonitor); None: nothing."""

    def __init__(self) -> None:
        self.health: int | None = 200
        self.metrics: str | None = "vllm:num_requests_running 8.0\n"

    async def fetch(self, url: str, timeout_s: float) -> tuple[int, bytes] | None:
        if url.endswith("/health"):
            return None if self.health is None else (self.health, b"")
        return None if self.metrics is None else (200, self.metrics.encode())


def monitor_of(replica: Replica, board: Scoreboard, clock: Clock,
               max_num_seqs: int | None = None,
               on_recovered: Callable[[str], None] | None = None) -> PoolMonitor:
    spec = PoolSpec("gpu", ("http://r:8000",), max_num_seqs=max_num_seqs)
    return PoolMonitor(spec, replica.fetch, members=lambda: ["http://r:8000"],
                       on_members=lambda roots: None, stats=board.by_id, clock=clock,
                       on_recovered=on_recovered)


async def test_configured_capacity_holds_until_a_queue_is_seen() -> None:
    clock, replica = Clock(), Replica()
    board = Scoreboard(clock)
    monitor = monitor_of(replica, board, clock, max_num_seqs=8)
    stats = board.by_id("http://r:8000")
    await monitor.scrape("http://r:8000")
    assert stats.pool.capacity == 8 and stats.queue_ahead() == 0  # 8 running: every slot
    replica.metrics = "vllm:num_requests_running 6.0\nvllm:num_requests_waiting 3.0\n"
    await monitor.scrape("http://r:8000")  # it runs 6 while 3 wait: its real capacity
    assert stats.pool.capacity == 6 and stats.pool.capacity_learned
    replica.metrics = "vllm:num_requests_running 2.0\n"
    await monitor.scrape("http://r:8000")
    assert stats.pool.capacity == 6  # learned: the configured value no longer applies
    unset = monitor_of(replica, Scoreboard(clock), clock)
    await unset.scrape("http://r:8000")
    assert unset._stats("http://r:8000").pool.capacity is None


async def test_a_replica_in_trouble_is_rechecked_until_it_is_fine() -> None:
    clock, replica = Clock(), Replica()
    board = Scoreboard(clock)
    monitor = monitor_of(replica, board, clock)
    stats = board.by_id("http://r:8000")
    await monitor.probe_all()
    await monitor.scrape_all()
    await monitor.recheck_troubled()  # nothing in trouble: nothing asked
    clock.now += 1
    replica.health = replica.metrics = None  # stopped
    await monitor.probe_all()
    assert stats.pool.healthy is False and stats.pool.trouble_from == 1000.0
    clock.now += 5
    await monitor.recheck_troubled()
    assert stats.pool.trouble_from is not None
    replica.health, replica.metrics = 200, "vllm:num_requests_running 3.0\n"
    clock.now += 0.25
    await monitor.recheck_troubled()  # probe and scrape at once: back
    assert stats.pool.healthy and not stats.pool.stale and stats.pool.trouble_from is None
    assert stats.incident == (1000.0, 1006.25)


async def test_the_monitor_tells_when_a_replica_is_back_from_an_outage() -> None:
    """Once, when the last of probe and scrape answers again; not on every fine round."""
    clock, replica = Clock(), Replica()
    board = Scoreboard(clock)
    back: list[str] = []
    monitor = monitor_of(replica, board, clock, on_recovered=back.append)
    await monitor.probe_all()
    await monitor.scrape_all()
    assert back == []  # fine all along: nothing ended
    replica.health = replica.metrics = None  # stopped
    clock.now += 1
    await monitor.probe_all()
    await monitor.scrape_all()
    replica.health = 200
    clock.now += 0.25
    await monitor.recheck_troubled()  # /health answers, scrapes still fail: not yet
    assert back == []
    replica.metrics = "vllm:num_requests_running 3.0\n"
    clock.now += 0.25
    await monitor.recheck_troubled()
    assert back == ["http://r:8000"]
    await monitor.probe_all()
    await monitor.scrape_all()
    assert back == ["http://r:8000"]


async def test_the_gateway_opens_the_probe_once_its_monitor_sees_the_replica_back() -> None:
    """Composition: the pool's monitor tells the circuit breakers. A replica's circuit,
    opened in an outage, lets its probe through as soon as the monitor finds the replica
    back, not after the (here one-minute) cooldown."""
    sim = Simulator("instant")
    with ThreadedSim(sim) as sims:
        async with serving({
                "failover": {"breaker": {"cooldown_s": 60}},
                "pools": [{"name": "gpu", "endpoints": sims.urls, "probe_interval_s": 0.05}],
                "models": {"m": {"deployments": [{"target": "gpu", "model": "x"}]}}}) as gw:
            services = gw.services
            assert services.failover is not None
            board = services.pipeline.dispatcher.runner.board
            dep = services.registry.models["m"][0]
            stats, breaker = board.stats(dep), services.failover.breakers.get(dep)
            sim.faults = Faults(unhealthy=True)  # its engine died
            deadline = time.monotonic() + 10
            while stats.pool.trouble_from is None:
                assert time.monotonic() < deadline, "never seen down"
                await asyncio.sleep(0.02)
            for _ in range(5):
                breaker.failure(board.clock(), False, "HTTP 503")
            assert breaker.state is CircuitState.OPEN
            sim.faults = Faults()  # back
            deadline = time.monotonic() + 5
            while stats.pool.trouble_from is not None:
                assert time.monotonic() < deadline, "never seen back"
                await asyncio.sleep(0.02)
            assert breaker.admit(board.clock()) is Pass.PROBE


def test_pool_config_takes_max_num_seqs() -> None:
    pool = {"name": "gpu", "endpoints": ["http://r:8000"]}
    models = {"m": {"deployments": [{"target": "gpu", "model": "x"}]}}
    cfg = parse_config({"pools": [{**pool, "max_num_seqs": 64}], "models": models})
    assert cfg.pools[0].max_num_seqs == 64
    assert parse_config({"pools": [pool], "models": models}).pools[0].max_num_seqs is None
    with pytest.raises(ConfigError, match="max_num_seqs"):
        parse_config({"pools": [{**pool, "max_num_seqs": 0}], "models": models})


async def test_the_gateway_gives_its_monitor_the_pools_max_num_seqs() -> None:
    with ThreadedSim(Simulator("instant")) as sims:
        async with serving({
                "pools": [{"name": "gpu", "endpoints": sims.urls, "max_num_seqs": 48,
                           "scrape_interval_s": 0.05}],
                "models": {"m": {"deployments": [{"target": "gpu", "model": "x"}]}}}) as gw:
            board = gw.services.pipeline.dispatcher.runner.board
            stats = board.by_id(replica_id("gpu", sims.urls[0]))
            deadline = time.monotonic() + 10
            while stats.pool.scraped_at is None:  # the monitor's first scrape
                assert time.monotonic() < deadline, "never scraped"
                await asyncio.sleep(0.02)
            assert stats.pool.capacity == 48 and not stats.pool.capacity_learned
