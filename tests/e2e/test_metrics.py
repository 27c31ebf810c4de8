"""`GET /metrics`, parsed with prometheus_client's own parser after known traffic: exact
request counts by model, deployment and status, histograms, tokens and cost, failover
events and circuit state, cache counters at 0, in-flight back to 0, Redis latency and
errors; and a two-worker gateway whose /metrics adds up what both workers served."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.metrics import MULTIPROC_ENV, multiprocess_dir
from selfhost.sim import ThreadedSim
from tests.support.inproc import serving, sim_fixture
from tests.support.procs import Gateway, RedisServer, free_port

KEY = "tk-metrics-team-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
MESSAGES: Any = [{"role": "user", "content": "Name three colours"}]
PRICE = {"input": 1.0, "output": 2.0}  # USD per 1M tokens


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


sim = sim_fixture()


def config(sim: ThreadedSim, **extra: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "prov", "base_url": sim.url + "/v1"},
                      {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                       "health_check": "off"}],
        "models": {
            "m": {"deployments": [{"target": "prov", "model": "tiny", "price": PRICE}]},
            "down": {"deployments": [{"target": "dead", "model": "gone"}]},
            "rescued": {"deployments": [{"target": "dead", "model": "gone"}],
                        "fallbacks": ["m"]},
        },
        "failover": {"breaker": {"consecutive_failures": 2, "cooldown_s": 60}},
        "teams": [{"name": "t", "keys": [{"id": "k", "key": KEY}]}],
        **extra,
    }


async def test_metrics_after_known_traffic(sim: ThreadedSim) -> None:
    usages = []
    async with serving(config(sim)) as gw:
        c = gw.client
        for _ in range(3):
            r = await c.post("/v1/chat/completions", headers=AUTH,
                             json={"model": "m", "messages": MESSAGES})
            usages.append(r.json()["usage"])
        for _ in range(2):
            r = await c.post("/v1/chat/completions", headers=AUTH, json={
                "model": "m", "messages": MESSAGES, "stream": True,
                "stream_options": {"include_usage": True}})
            assert r.status_code == 200 and '"usage":{' in r.text
            last = [line for line in r.text.splitlines() if '"usage":{' in line][-1]
            usages.append(httpx.Response(200, content=last.removeprefix("data: ")).json()[
                "usage"])
        statuses = [(await c.post("/v1/chat/completions", headers=AUTH, json={
            "model": model, "messages": MESSAGES})).status_code
            for model in ("down", "down", "rescued", "nope")]
        r = await c.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES},
                         headers={"authorization": "Bearer wrong-key-wrong-key"})
        statuses.append(r.status_code)
        assert statuses == [502, 502, 200, 404, 401]
        text = (await c.get("/metrics")).text
    s = parse(text)
    req = "turnout_requests_total"
    assert value(s, req, model="m", deployment="prov/tiny", status="200") == 5
    assert value(s, req, model="down", deployment="", status="502") == 2
    assert value(s, req, model="rescued", deployment="prov/tiny", status="200") == 1
    assert value(s, req, model="", deployment="", status="404") == 1  # unknown: no label
    assert value(s, req, model="", deployment="", status="401") == 1
    assert sum(v for (name, _), v in s.items() if name == req) == 10

    md = {"model": "m", "deployment": "prov/tiny"}
    assert value(s, "turnout_request_duration_seconds_count", **md) == 5
    assert value(s, "turnout_time_to_first_token_seconds_count", **md) == 2
    assert value(s, "turnout_time_per_output_token_seconds_count", **md) == 2
    assert value(s, "turnout_request_duration_seconds_bucket", **md, le="+Inf") == 5
    # Dispatched requests (the 2 failures too) measure the gateway's own time.
    assert value(s, "turnout_gateway_overhead_seconds_count") == 8
    assert 0 < value(s, "turnout_gateway_overhead_seconds_sum") < 8 * 0.25
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    assert value(s, "turnout_tokens_total", **md, type="input") == prompt
    assert value(s, "turnout_tokens_total", **md, type="output") == completion
    assert value(s, "turnout_cost_usd_total", **md) == pytest.approx(
        (prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6)
    for model in ("m", "down", "rescued"):
        assert value(s, "turnout_requests_in_flight", model=model) == 0
        assert value(s, "turnout_cache_lookups_total", model=model, result="hit") == 0
        assert value(s, "turnout_cache_lookups_total", model=model, result="miss") == 0
    # Two connect failures opened dead/gone's circuit; `rescued` skipped it, fell back.
    assert value(s, "turnout_circuit_state", deployment="dead/gone") == 2
    assert value(s, "turnout_circuit_state", deployment="prov/tiny") == 0
    assert value(s, "turnout_failover_events_total", event="fallbacks") == 1
    assert value(s, "turnout_failover_events_total", event="failovers") == 0
    assert value(s, "turnout_failover_events_total", event="hedges") == 0


async def test_cache_lookups_by_result(sim: ThreadedSim) -> None:
    async with serving(config(sim, cache={"enabled": True})) as gw:
        deterministic = {"model": "m", "messages": MESSAGES, "temperature": 0}
        for body in (deterministic, deterministic, {"model": "m", "messages": MESSAGES}):
            r = await gw.client.post("/v1/chat/completions", headers=AUTH, json=body)
            assert r.status_code == 200
        s = parse((await gw.client.get("/metrics")).text)
    cache = "turnout_cache_lookups_total"
    assert [value(s, cache, model="m", result=result) for result in ("miss", "hit", "bypass")
            ] == [1, 1, 1]
    assert value(s, cache, model="down", result="hit") == 0
    # The hit ran nowhere: no deployment, no tokens generated for it.
    assert value(s, "turnout_requests_total", model="m", deployment="", status="200") == 1
    assert value(s, "turnout_requests_total", model="m", deployment="prov/tiny",
                 status="200") == 2


async def test_metrics_off_has_no_route(sim: ThreadedSim) -> None:
    async with serving(config(sim, telemetry={"metrics": False, "access_log": False})) as gw:
        assert gw.services.telemetry.metrics is None
        assert gw.services.pipeline.telemetry is None  # nothing at all on the settle path
        assert (await gw.client.get("/metrics")).status_code == 404


async def test_redis_latency_and_errors(sim: ThreadedSim, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    try:
        # Leases off: every request is admitted by Redis, and so timed (one `admit` each).
        async with serving(config(sim, redis={"url": redis.url},
                                  admission={"leases": False})) as gw:
            for _ in range(2):
                r = await gw.client.post("/v1/chat/completions", headers=AUTH,
                                         json={"model": "m", "messages": MESSAGES})
                assert r.status_code == 200
            redis.kill()
            r = await gw.client.post("/v1/chat/completions", headers=AUTH,
                                     json={"model": "m", "messages": MESSAGES})
            assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
            s = parse((await gw.client.get("/metrics")).text)
            # Back, so the usage events buffered meanwhile settle before shutdown.
            redis = RedisServer(tmp_path, port=redis.port)
    finally:
        redis.stop()
    assert value(s, "turnout_redis_duration_seconds_count", op="admit") == 3
    assert value(s, "turnout_redis_errors_total", op="admit") == 1
    assert value(s, "turnout_requests_total", model="m", deployment="", status="503") == 1


def test_serve_prepares_a_multiprocess_folder(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "")  # whatever happens below is undone after
    monkeypatch.delenv(MULTIPROC_ENV)
    made = multiprocess_dir()
    assert made is not None and os.environ[MULTIPROC_ENV] == made
    assert Path(made).is_dir() and not any(Path(made).iterdir())
    shutil.rmtree(made)
    # The operator's own folder is kept, emptied of an earlier run's metric files only.
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    assert multiprocess_dir() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def served_by_worker(folder: Path) -> dict[str, float]:
    """Requests each worker recorded, read from its own multiprocess file."""
    out = {}
    for path in folder.glob("counter_*.db"):
        metrics = MultiProcessCollector.merge([str(path)], accumulate=False)
        out[path.stem] = sum(s.value for m in metrics for s in m.samples
                             if s.name == "turnout_requests_total")
    return out


def settled(url: str) -> Samples:
    """/metrics once nothing is in flight. A worker settles a request just after its last
    byte went out, so a client (or the other worker) can be a moment ahead of it; the
    in-flight gauge drops last, after every other count of the request."""
    deadline = time.monotonic() + 10
    while True:
        with httpx.Client() as client:
            samples = parse(client.get(url + "/metrics").text)
        if value(samples, "turnout_requests_in_flight", model="m") == 0:
            return samples
        assert time.monotonic() < deadline, "requests still in flight after 10 s"


def test_two_workers_add_up(sim: ThreadedSim, tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    gw = Gateway({"providers": [{"name": "prov", "base_url": sim.url + "/v1"}],
                  "models": {"m": {"deployments": [{"target": "prov", "model": "tiny"}]}},
                  "telemetry": {"access_log": False}},
                 tmp_path, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    try:
        sent = 0
        body = {"model": "m", "messages": MESSAGES, "max_tokens": 2}
        # One connection per request, until the kernel has handed both workers some.
        while sent < 400 and sum(1 for n in served_by_worker(folder).values() if n) < 2:
            with httpx.Client() as client:
                assert client.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
            sent += 1
        for _ in range(4):  # whichever worker answers the scrape, it reports both
            s = settled(gw.url)
            assert value(s, "turnout_requests_total", model="m", deployment="prov/tiny",
                         status="200") == sent
            assert value(s, "turnout_tokens_total", model="m", deployment="prov/tiny",
                         type="output") == 2 * sent
        per_worker = served_by_worker(folder)
        assert len(per_worker) == 2 and all(per_worker.values())
        assert sum(per_worker.values()) == sent
    finally:
        gw.stop()
