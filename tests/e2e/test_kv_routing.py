"""KV-aware routing through a running gateway over a simulated pool that publishes its KV
events (vLLM's wire format, over ZeroMQ): requests that share a system prompt land on the
replica that holds it, and the route header says how much of the prompt was cached."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest
from openai import OpenAI

from tests.support.procs import Gateway

SYSTEMS = [" ".join(f"rule{k}-{i}" for i in range(120)) for k in range(4)]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "pools": [{"name": "sim", "simulate": {"profile": "instant", "replicas": 3,
                                               "kv_blocks": 256, "block_size": 16},
                   "kv_events": {"heartbeat_s": 0.2}}],
        "models": {"m": {"deployments": [{"target": "sim", "model": "sim-model"}],
                         "routing": {"policy": "kv-aware"}},
                   "m2": {"deployments": [{"target": "sim", "model": "sim-model"}],
                          "routing": {"policy": "slo-cost", "within_pool": "kv-aware"}}},
    }
    gw = Gateway(config, tmp_path_factory.mktemp("kv"))
    yield gw
    gw.stop()


def test_a_shared_system_prompt_sticks_to_the_replica_holding_it(gateway: Gateway) -> None:
    client = OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
    homes: dict[int, set[str]] = defaultdict(set)
    routes = []
    for i in range(16):
        k = i % len(SYSTEMS)
        raw = client.chat.completions.with_raw_response.create(
            model="m", max_tokens=2, messages=[{"role": "system", "content": SYSTEMS[k]},
                                              {"role": "user", "content": f"question {i}"}])
        homes[k].add(raw.headers["x-turnout-deployment"])
        routes.append(raw.headers["x-turnout-route"])
        usage = raw.parse().usage
        assert usage is not None
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        if i >= len(SYSTEMS):  # the system prompt (124 tokens) is cached: 7 blocks of 16
            assert cached == 112, routes[-1]
    assert all(len(h) == 1 for h in homes.values()), homes
    # Each first request is a new prefix (its ring home); every later one names its match.
    assert all(r.startswith("kv-aware; kv prefix none cached: prefix") for r in routes[:4]), routes
    assert all(r == "kv-aware; kv prefix 112 tokens cached" for r in routes[4:]), routes


def test_slo_costs_within_pool_step_says_what_it_matched(gateway: Gateway) -> None:
    client = OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
    messages = [{"role": "system", "content": "shared " + SYSTEMS[0]},
                {"role": "user", "content": "a question"}]
    seen, routes = set(), []
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="m2", max_tokens=2, messages=messages)  # type: ignore[arg-type]
        seen.add(raw.headers["x-turnout-deployment"])
        routes.append(raw.headers["x-turnout-route"])
    assert len(seen) == 1
    assert all(r.startswith("slo-cost; cheapest") for r in routes), routes
    # The whole prompt repeats: its 8 full blocks (131 tokens) are cached.
    assert all(r.endswith("; kv prefix 128 tokens cached") for r in routes[1:]), routes
