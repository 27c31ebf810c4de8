"""Metering end to end with the in-memory store: upstream-reported usage, counted usage
for cut streams, cost from the price table (cached input included), rollups, exports and
the CLI, and rate-limit headers on every response."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from gateway.cli import main
from selfhost.sim import Faults, Simulator, ThreadedSim
from tests.support.accounts import EXACT_MESSAGES, EXACT_PROMPT_TOKENS, auth, eventually, new_key
from tests.support.procs import Gateway, free_port

KEY, ADMIN = new_key(), new_key()
TEAM = "metered"
PRICE = {"input": 1.0, "output": 2.0, "cached_input": 0.5}
TWO_MESSAGES = [{"role": "system", "content": "You are terse and kind."},
                {"role": "user", "content": "Say something"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    cut = Simulator("instant", faults=Faults(disconnect_after_chunks=4))
    with ThreadedSim(Simulator("instant"), cut) as sims:
        targets = {"chat": sims.urls[0], "cut": sims.urls[1],
                   "down": f"http://127.0.0.1:{free_port()}"}
        config = {
            "auth": {"admin_key": ADMIN},
            "providers": [{"name": n, "base_url": u + "/v1"} for n, u in targets.items()],
            "models": {n: {"deployments": [{"target": n, "model": "m", "price": PRICE}]}
                       for n in targets},
            "teams": [{"name": TEAM, "limits": {"rpm": 1000, "tpm": 1_000_000},
                       "keys": [{"id": "m1", "key": KEY}]}],
        }
        gw = Gateway(config, tmp_path_factory.mktemp("gw"))
        yield gw
        gw.stop()


def post(gw: Gateway, model: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", headers=auth(KEY), timeout=30,
                      json={"model": model, "messages": EXACT_MESSAGES, **body})


def events(gw: Gateway) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{gw.url}/admin/events", headers=auth(ADMIN),
                  params={"team": TEAM, "format": "json"})
    return {e["request_id"]: e for e in r.json()["data"]}


def event_of(gw: Gateway, response: httpx.Response) -> dict[str, Any]:
    rid = response.headers["x-request-id"]
    found: dict[str, Any] = eventually(lambda: events(gw).get(rid))
    return found


def nanos(usage: dict[str, int]) -> int:
    cached = usage["cached_tokens"]
    return round(1000 * ((usage["prompt_tokens"] - cached) * PRICE["input"]
                         + cached * PRICE["cached_input"]
                         + usage["completion_tokens"] * PRICE["output"]))


def test_upstream_usage_with_cached_tokens_and_price(gateway: Gateway) -> None:
    replies = [post(gateway, "chat", messages=TWO_MESSAGES, max_tokens=7) for _ in range(2)]
    for reply in replies:
        usage = reply.json()["usage"]
        event = event_of(gateway, reply)
        assert event["prompt_tokens"] == usage["prompt_tokens"]
        assert event["completion_tokens"] == 7 == usage["completion_tokens"]
        assert event["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
        assert round(event["cost_usd"] * 1e9) == nanos(event)
        assert (event["estimated"], event["status"], event["deployment"]) == \
            (False, 200, "chat/m")
        assert event["latency_ms"] >= event["ttft_ms"] > 0
    assert event_of(gateway, replies[1])["cached_tokens"] > 0  # the repeated prefix was cached


def test_stream_metered_from_upstream_usage(gateway: Gateway) -> None:
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", headers=auth(KEY),
                      json={"model": "chat", "messages": EXACT_MESSAGES, "max_tokens": 9,
                            "stream": True}) as r:
        body = r.read()
    assert b'"usage":{' not in body  # the client did not ask for the usage chunk...
    event = event_of(gateway, r)
    assert (event["completion_tokens"], event["estimated"], event["stream"]) == (9, False, True)


def test_cut_stream_is_counted_and_marked_estimated(gateway: Gateway) -> None:
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", headers=auth(KEY),
                      json={"model": "cut", "messages": EXACT_MESSAGES, "max_tokens": 20,
                            "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    chunks = [orjson.loads(line[6:]) for line in lines]
    assert "error" in chunks[-1]  # the client saw the stream break
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    event = event_of(gateway, r)
    assert event["estimated"] is True and event["status"] == 502
    assert event["completion_tokens"] == math.ceil(len(text) / 4) > 0
    assert event["prompt_tokens"] == EXACT_PROMPT_TOKENS


def test_failed_upstream_costs_nothing_and_has_headers(gateway: Gateway) -> None:
    r = post(gateway, "down")
    assert r.status_code == 502
    assert r.headers["x-ratelimit-limit-requests"] == "1000"
    event = event_of(gateway, r)
    assert (event["total_tokens"], event["cost_usd"], event["status"]) == (0, 0.0, 502)


def test_rate_limit_headers_on_success(gateway: Gateway) -> None:
    r = post(gateway, "chat", max_tokens=3)
    h = r.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-limit-tokens"]) == \
        ("1000", "1000000")
    assert int(h["x-ratelimit-remaining-requests"]) < 1000
    assert int(h["x-ratelimit-remaining-tokens"]) <= 1_000_000 - EXACT_PROMPT_TOKENS - 3
    assert h["x-ratelimit-reset-requests"].endswith("ms")  # 60 s / 1000 per request used
    assert h["x-ratelimit-reset-tokens"].endswith("ms")


def test_usage_report_exports_and_cli(gateway: Gateway, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    r = post(gateway, "chat", max_tokens=2)
    event_of(gateway, r)  # settled
    all_events = events(gateway)
    per_model: dict[str, int] = {}
    for e in all_events.values():
        per_model[e["model"]] = per_model.get(e["model"], 0) + 1
    rows = httpx.get(f"{gateway.url}/admin/usage", headers=auth(ADMIN),
                     params={"team": TEAM, "by": "model"}).json()["data"]
    assert {row["model"]: row["requests"] for row in rows} == per_model
    assert next(r for r in rows if r["model"] == "down")["errors"] == per_model["down"]
    total = sum(round(e["cost_usd"] * 1e9) for e in all_events.values())
    assert round(sum(row["cost_usd"] for row in rows) * 1e9) == total

    csv_api = httpx.get(f"{gateway.url}/admin/usage", headers=auth(ADMIN),
                        params={"team": TEAM, "by": "model", "format": "csv"}).text
    assert csv_api.splitlines()[0].startswith("model,requests,prompt_tokens")
    common = ["--url", gateway.url, "--admin-key", ADMIN, "--team", TEAM]
    assert main(["usage", "--by", "model", "--format", "csv", *common]) == 0
    assert capsys.readouterr().out == csv_api
    assert main(["usage", "--events", "--format", "jsonl", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {orjson.loads(line)["request_id"] for line in lines} == set(all_events)
    assert main(["usage", "--by", "team,day", *common]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["team", "day", "requests"] and len(table) == 2
