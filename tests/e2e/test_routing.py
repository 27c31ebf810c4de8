"""Routing through a running gateway: SLO from the request header, load shedding by
priority, and the explanation headers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from selfhost.sim import Faults, SimProfile, Simulator, ThreadedSim
from tests.support.accounts import eventually
from tests.support.procs import Gateway

BATCH_KEY = "tk-test-batch-0123456789abcdef"
PROD_KEY = "tk-test-prod-0123456789abcdef"
ADMIN_KEY = "tk-test-admin-0123456789abcdef0123456789"
HI = [{"role": "user", "content": "hi"}]


def stream(client: OpenAI, **headers: str) -> str:
    with client.chat.completions.with_streaming_response.create(
            model="m", messages=HI, stream=True, max_tokens=2,
            extra_headers=headers) as resp:
        for _ in resp.iter_lines():
            pass
        return resp.headers["x-turnout-deployment"]


@pytest.fixture(scope="module")
def sims() -> Iterator[ThreadedSim]:
    # "cheap" answers its first token after ~300 ms, "fast" at once but costs more.
    cheap = Simulator(SimProfile.named("instant", base_ttft_ms=300.0))
    with ThreadedSim(cheap, Simulator("instant")) as s:
        yield s


def cheap_and_fast(sims: ThreadedSim, **extra: Any) -> dict[str, Any]:
    cheap, fast = sims.urls
    return {
        "providers": [{"name": "cheap", "base_url": cheap + "/v1"},
                      {"name": "fast", "base_url": fast + "/v1"}],
        "models": {"m": {"deployments": [
            {"target": "cheap", "model": "x", "price": {"input": 0.1, "output": 0.1}},
            {"target": "fast", "model": "x", "price": {"input": 1.0, "output": 1.0}}]}},
        **extra,
    }


def test_slo_header_moves_traffic_to_a_faster_deployment(sims: ThreadedSim,
                                                         tmp_path: Path) -> None:
    gw = Gateway(cheap_and_fast(sims), tmp_path)
    try:
        client = OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        # No SLO: the cheapest, always (and its TTFT is learned along the way).
        assert {stream(client) for _ in range(6)} == {"cheap/x"}
        # A 100 ms SLO that "cheap" (P99 ~300 ms) cannot meet: the faster one.
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=HI, extra_headers={"x-turnout-slo-ttft-ms": "100"})
        assert raw.headers["x-turnout-deployment"] == "fast/x"
        assert "cheapest meeting ttft<=100ms" in raw.headers["x-turnout-route"]
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", messages=HI,
                                           extra_headers={"x-turnout-slo-ttft-ms": "soon"})
        assert info.value.body["param"] == "x-turnout-slo-ttft-ms"  # type: ignore[index]
    finally:
        gw.stop()


def test_low_priority_is_shed_when_no_deployment_meets_the_slo(tmp_path: Path) -> None:
    slow = Simulator("instant", faults=Faults(extra_ttft_ms=400))
    with ThreadedSim(slow) as sim:
        gw = Gateway({
            "routing": {"slo_ttft_ms": 100, "shed_wait_ms": 200, "shed_below_priority": 1},
            "auth": {"admin_key": ADMIN_KEY},
            "providers": [{"name": "slow", "base_url": sim.url + "/v1"}],
            # Priced, so that admission reserves budget for each request.
            "models": {"m": {"deployments": [{"target": "slow", "model": "x",
                                              "price": {"input": 1.0, "output": 1.0}}]}},
            "teams": [
                {"name": "batch", "priority": 0, "budget": {"usd": 10, "period": "daily"},
                 "keys": [{"id": "b", "key": BATCH_KEY}]},
                {"name": "prod", "priority": 2, "keys": [{"id": "p", "key": PROD_KEY}]},
            ],
        }, tmp_path)
        try:
            batch = OpenAI(base_url=gw.url + "/v1", api_key=BATCH_KEY, max_retries=0)
            prod = OpenAI(base_url=gw.url + "/v1", api_key=PROD_KEY, max_retries=0)
            for _ in range(5):  # the gateway learns the deployment's TTFT (~400 ms)
                stream(prod)
            sent = slow.stats.requests_total
            with pytest.raises(openai.RateLimitError) as info:
                stream(batch)
            assert info.value.code == "overloaded"
            assert int(info.value.response.headers["retry-after"]) >= 1

            def spend() -> dict[str, Any]:
                r = httpx.get(f"{gw.url}/admin/teams/batch",
                              headers={"authorization": f"Bearer {ADMIN_KEY}"})
                assert r.status_code == 200, r.text
                return dict(r.json()["spend"])

            # Shed after admission: its reservation is settled at once, to nothing spent
            # (well before reservations lapse, admission.reservation_ttl_s: ~64 s here).
            eventually(lambda: spend()["reserved_usd"] == 0, timeout=5)
            assert spend()["spent_usd"] == 0
            # A high-priority team still gets through, unless it lowers its own priority;
            # the header can never raise a team's priority.
            assert stream(prod) == "slow/x"
            with pytest.raises(openai.RateLimitError):
                stream(prod, **{"x-turnout-priority": "0"})
            with pytest.raises(openai.RateLimitError):
                stream(batch, **{"x-turnout-priority": "5"})
            assert slow.stats.requests_total == sent + 1  # shed requests never went upstream
        finally:
            gw.stop()


def test_team_slo_applies_and_the_header_overrides_it(sims: ThreadedSim,
                                                       tmp_path: Path) -> None:
    gw = Gateway(cheap_and_fast(sims, teams=[{"name": "interactive", "slo_ttft_ms": 100,
                                               "keys": [{"id": "i", "key": PROD_KEY}]}]),
                 tmp_path)
    try:
        client = OpenAI(base_url=gw.url + "/v1", api_key=PROD_KEY, max_retries=0)
        # Relaxed per request, the cheap one is fine (and its ~300 ms TTFT is learned).
        loose = {"x-turnout-slo-ttft-ms": "2000"}
        assert {stream(client, **loose) for _ in range(6)} == {"cheap/x"}
        # The team's own 100 ms target: the fast one.
        assert stream(client) == "fast/x"
    finally:
        gw.stop()
