"""The JSON access log: exactly one line per request, refused ones included, carrying the
request id the client got back (its own `x-request-id` or one made for it), and never a
key: checked in process on the logger, and in a real gateway's log file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.telemetry.access_log import LOGGER
from selfhost.sim import ThreadedSim
from tests.support.inproc import captured, serving, sim_fixture
from tests.support.procs import Gateway, free_port

KEY = "tk-access-log-team-key-0123456789"
PROVIDER_KEY = "sk-access-log-provider-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
MESSAGES: Any = [{"role": "user", "content": "Tell me a secret recipe"}]


sim = sim_fixture()


def config(sim: ThreadedSim, **extra: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "prov", "base_url": sim.url + "/v1", "api_key": PROVIDER_KEY},
                      {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"}],
        "models": {"m": {"deployments": [{"target": "prov", "model": "tiny",
                                          "price": {"input": 1.0, "output": 2.0}}]},
                   "down": {"deployments": [{"target": "dead", "model": "gone"}]}},
        "teams": [{"name": "t", "limits": {"rpm": 4}, "keys": [{"id": "k1", "key": KEY}]}],
        **extra,
    }


async def traffic(client: httpx.AsyncClient) -> list[httpx.Response]:
    """Nine requests: 2 answered, 1 upstream failure, 1 rate-limited and 5 refused early."""
    chat = "/v1/chat/completions"
    return [
        await client.post(chat, headers={**AUTH, "x-request-id": "client-chosen-id-1"},
                          json={"model": "m", "messages": MESSAGES, "max_tokens": 4}),
        await client.post(chat, headers=AUTH,
                          json={"model": "m", "messages": MESSAGES, "stream": True}),
        await client.post(chat, headers=AUTH, json={"model": "down", "messages": MESSAGES}),
        await client.post(chat, headers={"authorization": "Bearer not-a-real-key-0000"},
                          json={"model": "m", "messages": MESSAGES}),
        await client.post(chat, json={"model": "m", "messages": MESSAGES}),
        await client.post(chat, headers=AUTH, json={"model": "nope", "messages": MESSAGES}),
        await client.post(chat, headers=AUTH, content=b'{"model": '),
        await client.post(chat, headers=AUTH, json={"model": "m", "messages": MESSAGES}),
        await client.post(chat, headers=AUTH, json={"model": "m", "messages": MESSAGES}),
    ]


async def test_one_line_per_request_with_its_request_id(sim: ThreadedSim) -> None:
    async with serving(config(sim)) as gw:
        with captured(LOGGER) as lines:
            responses = await traffic(gw.client)
    assert [r.status_code for r in responses] == [200, 200, 502, 401, 401, 404, 400, 200, 429]
    assert len(lines) == len(responses)
    records = [json.loads(line) for line in lines]
    assert [r["request_id"] for r in records] == [r.headers["x-request-id"] for r in responses]
    assert records[0]["request_id"] == "client-chosen-id-1"
    assert all(len(r.headers["x-request-id"]) == 24 for r in responses[1:])
    assert [r["status"] for r in records] == [r.status_code for r in responses]

    answered = records[0]
    usage = responses[0].json()["usage"]
    assert answered["team"] == "t" and answered["key_id"] == "k1"
    assert answered["model"] == "m" and answered["deployment"] == "prov/tiny"
    assert answered["prompt_tokens"] == usage["prompt_tokens"]
    assert answered["completion_tokens"] == usage["completion_tokens"] == 4
    assert answered["cost_usd"] == pytest.approx(
        (usage["prompt_tokens"] * 1.0 + 4 * 2.0) / 1e6)
    assert answered["retries"] == 0 and answered["cache_hit"] is False
    assert 0 < answered["ttft_ms"] <= answered["latency_ms"]
    streamed = records[1]
    assert streamed["stream"] is True and streamed["ttft_ms"] <= streamed["latency_ms"]
    assert records[2]["deployment"] is None and records[2]["completion_tokens"] == 0
    assert [(r["team"], r["error"]) for r in records[3:7]] == [
        (None, "invalid_api_key"), (None, "invalid_api_key"), ("t", "model_not_found"),
        ("t", None)]
    assert records[8]["error"] == "rate_limit_exceeded" and records[8]["model"] == "m"
    assert all("trace_id" not in r for r in records)  # tracing is off
    assert all(KEY not in line and PROVIDER_KEY not in line for line in lines)
    assert all("secret recipe" not in line for line in lines)  # no content, ever


async def test_lines_carry_the_trace_id_when_tracing(sim: ThreadedSim) -> None:
    cfg = config(sim, telemetry={"tracing": {"enabled": True, "exporter": "none"}})
    async with serving(cfg) as gw:
        tracing = gw.services.telemetry.tracing
        assert tracing is not None
        spans = InMemorySpanExporter()
        tracing.add_span_processor(SimpleSpanProcessor(spans))
        with captured(LOGGER) as lines:
            await traffic(gw.client)
    servers = [s for s in spans.get_finished_spans() if s.parent is None]
    assert [json.loads(line)["trace_id"] for line in lines] == [
        format(s.get_span_context().trace_id, "032x") for s in servers]


async def test_access_log_off(sim: ThreadedSim) -> None:
    async with serving(config(sim, telemetry={"access_log": False})) as gw:
        with captured(LOGGER) as lines:
            await traffic(gw.client)
    assert lines == []


def test_gateway_log_never_holds_a_key(sim: ThreadedSim, tmp_path: Path) -> None:
    gw = Gateway(config(sim), tmp_path)
    try:
        with httpx.Client(base_url=gw.url) as client:
            statuses = [client.post("/v1/chat/completions", headers=h, json={
                "model": "m", "messages": MESSAGES}).status_code
                for h in (AUTH, AUTH, {"authorization": f"Bearer {KEY}x"})]
        assert statuses == [200, 200, 401]
        assert sim.sim.stats.last_headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    finally:
        gw.stop()
    log = gw.logs()
    access = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [r["status"] for r in access] == [200, 200, 401]
    assert KEY not in log and PROVIDER_KEY not in log
