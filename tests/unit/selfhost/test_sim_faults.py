"""The vLLM/OpenAI simulator, over real sockets: timing, metrics, load, cancels, faults,
serving."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx2
import openai
import pytest

from selfhost.sim import (
    FailNext,
    Faults,
    SimProfile,
    SimStats,
    Simulator,
    ThreadedSim,
    add_arguments,
    serve,
)
from selfhost.sim_state import FifoSlots
from tests.support.sim_clients import (
    CHAT,
    MESSAGES,
    PROMPT_TOKENS,
    STUCK,
    http,
    raw_post,
    read_until,
    scrape,
    sdk,
    sse_payloads,
)

ROOT = Path(__file__).resolve().parents[3]


# -- timing, scheduling, metrics ------------------------------------------------------------------


def test_latency_follows_the_profile() -> None:
    profile = SimProfile.named("instant", base_ttft_ms=80, itl_ms=20)
    with ThreadedSim(Simulator(profile)) as s:
        client = http(s)
        start = time.perf_counter()
        with client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 4, "stream": True}
        ) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
            first = time.perf_counter() - start
            assert sum(1 for line in lines if line.startswith("data: ")) == 4 + 1  # and [DONE]
        total = time.perf_counter() - start
        assert first >= 0.08 and total >= 0.08 + 3 * 0.02
        start = time.perf_counter()
        client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}).raise_for_status()
        assert time.perf_counter() - start >= 0.08 + 3 * 0.02
        metrics = scrape(s)
        assert metrics[("vllm:time_to_first_token_seconds_count", "")] == 2
        assert metrics[("vllm:time_to_first_token_seconds_sum", "")] >= 0.16
        assert metrics[("vllm:inter_token_latency_seconds_count", "")] == 6
        assert metrics[("vllm:inter_token_latency_seconds_bucket", "0.01")] == 0
        assert metrics[("vllm:e2e_request_latency_seconds_count", "")] == 2


def test_extra_ttft_fault_slows_a_healthy_server(sim: ThreadedSim) -> None:
    assert http(sim).post("/sim/faults", json={"extra_ttft_ms": 60}).is_success
    start = time.perf_counter()
    http(sim).post("/v1/completions", json={"prompt": "x"}).raise_for_status()
    assert time.perf_counter() - start >= 0.06
    assert scrape(sim)[("vllm:time_to_first_token_seconds_bucket", "0.04")] == 0


def test_metrics_counters_and_prefix_cache(sim: ThreadedSim) -> None:
    client = sdk(sim)
    for _ in range(3):
        done = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4)
    assert done.usage is not None and done.usage.prompt_tokens_details is not None
    assert done.usage.prompt_tokens_details.cached_tokens == PROMPT_TOKENS  # repeated prompt
    client.chat.completions.create(
        model="m", messages=[*MESSAGES[:1], {"role": "user", "content": "new"}]
    )
    metrics = scrape(sim)
    assert metrics[("vllm:request_success_total", "length")] == 3
    assert metrics[("vllm:request_success_total", "stop")] == 1
    assert metrics[("vllm:generation_tokens_total", "")] == 3 * 4 + 16
    assert metrics[("vllm:prompt_tokens_total", "")] == 3 * PROMPT_TOKENS + 12
    assert metrics[("vllm:prefix_cache_queries_total", "")] == 3 * PROMPT_TOKENS + 12
    # 2 full repeats, then the shared system message (3 words + 4) of the last prompt
    assert metrics[("vllm:prefix_cache_hits_total", "")] == 2 * PROMPT_TOKENS + 7
    assert metrics[("vllm:num_requests_running", "")] == 0
    assert metrics[("vllm:e2e_request_latency_seconds_bucket", "+Inf")] == 4


def test_running_and_waiting_under_load_then_cancel_all() -> None:
    sim = Simulator(SimProfile.named("instant", max_num_seqs=2, base_ttft_ms=600_000))
    with ThreadedSim(sim) as s:
        socks = [raw_post(s, "/v1/chat/completions", CHAT) for _ in range(5)]
        assert sim.stats.wait_for(lambda st: st.running == 2 and st.waiting == 3)
        metrics = scrape(s)
        assert metrics[("vllm:num_requests_running", "")] == 2
        assert metrics[("vllm:num_requests_waiting", "")] == 3
        assert metrics[("vllm:kv_cache_usage_perc", "")] == 1.0
        for sock in socks:
            sock.close()
        assert sim.stats.wait_for(
            lambda st: (st.cancelled, st.active, st.running, st.waiting) == (5, 0, 0, 0)
        )
        metrics = scrape(s)
        assert metrics[("vllm:num_requests_running", "")] == 0
        assert metrics[("vllm:request_success_total", "abort")] == 5


def test_fifo_slots_serve_in_order_and_skip_cancelled_waiters() -> None:
    async def scenario() -> list[str]:
        loads: list[tuple[int, int]] = []
        slots = FifoSlots(1, lambda running, waiting: loads.append((running, waiting)))
        order: list[str] = []

        async def user(name: str) -> None:
            await slots.acquire()
            order.append(name)

        await slots.acquire()
        tasks = {n: asyncio.create_task(user(n)) for n in "abc"}
        await asyncio.sleep(0)
        assert slots.waiting == 3
        tasks["b"].cancel()
        slots.release()  # to a, skipping nobody yet
        await asyncio.sleep(0)
        slots.release()  # b was cancelled: straight to c
        await asyncio.gather(tasks["a"], tasks["c"])
        assert (slots.running, slots.waiting) == (1, 0) and loads[-1] == (1, 0)
        return order

    assert asyncio.run(scenario()) == ["a", "c"]


# -- client disconnects -------------------------------------------------------------------------


def test_client_disconnect_mid_stream_is_cancelled() -> None:
    sim = Simulator(SimProfile.named("instant", itl_ms=600_000))  # first token, then silence
    with ThreadedSim(sim) as s:
        sock = raw_post(s, "/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 50})
        read_until(sock, b"data: ", count=2)  # role chunk and first token
        assert sim.stats.active == 1
        sock.close()
        assert sim.stats.wait_for(lambda st: st.cancelled == 1 and st.active == 0)
        assert (sim.stats.completed, sim.stats.running) == (0, 0)


def test_client_disconnect_while_queued_or_in_prefill() -> None:
    sim = Simulator(SimProfile.named("instant", max_num_seqs=1, base_ttft_ms=600_000))
    with ThreadedSim(sim) as s:
        first = raw_post(s, "/v1/chat/completions", CHAT)
        assert sim.stats.wait_for(lambda st: st.running == 1)
        queued = raw_post(s, "/v1/chat/completions", {**CHAT, "stream": True})
        assert sim.stats.wait_for(lambda st: st.waiting == 1)
        queued.close()
        assert sim.stats.wait_for(lambda st: st.cancelled == 1 and st.waiting == 0)
        assert (sim.stats.active, sim.stats.running) == (1, 1)
        first.close()  # now in its (long) TTFT wait
        assert sim.stats.wait_for(lambda st: (st.cancelled, st.active, st.running) == (2, 0, 0))


def test_sdk_timeout_cancels_upstream_request() -> None:
    with ThreadedSim(Simulator(STUCK)) as s:
        with pytest.raises(openai.APITimeoutError):
            sdk(s, timeout=0.2).chat.completions.create(model="m", messages=MESSAGES)
        assert s.sim.stats.wait_for(lambda st: st.cancelled == 1 and st.active == 0)


# -- faults ------------------------------------------------------------------------------------


def test_fail_next_429_over_http_then_sdk_retries(sim: ThreadedSim) -> None:
    body = {"fail_next": {"count": 2, "status": 429}, "retry_after_s": 0.05}
    assert http(sim).post("/sim/faults", json=body).json()["fail_next"]["count"] == 2
    with pytest.raises(openai.RateLimitError) as info:
        sdk(sim).chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.response.headers["retry-after-ms"] == "50"
    assert info.value.code == "rate_limit_exceeded"
    retrying = sdk(sim, max_retries=2)
    done = retrying.chat.completions.create(model="m", messages=MESSAGES)
    assert done.choices[0].finish_reason == "stop"
    stats = sim.sim.stats
    assert stats.by_status == {429: 2, 200: 1} and stats.injected == {"429": 2}
    assert sim.sim.faults.fail_next is None


def test_status_rates(sim: ThreadedSim) -> None:
    sim.sim.faults.rate_500 = 1.0
    with pytest.raises(openai.InternalServerError) as info:
        sdk(sim).chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 500 and info.value.type == "server_error"
    sim.sim.faults = Faults(rate_503=1.0)
    assert http(sim).post("/v1/embeddings", json={"input": "x"}).status_code == 503
    assert http(sim).post("/v1/completions", json={"prompt": "x"}).status_code == 503


def test_fault_rates_are_seeded() -> None:
    def statuses(seed: int) -> list[int]:
        sim = Simulator(seed=seed, faults=Faults(rate_429=0.3, rate_503=0.3))
        with ThreadedSim(sim) as s:
            client = http(s)
            return [
                client.post("/v1/completions", json={"prompt": "x"}).status_code for _ in range(30)
            ]

    first = statuses(7)
    assert first == statuses(7) and {200, 429, 503} == set(first)
    assert first != statuses(8)


def test_hang_until_client_leaves() -> None:
    with ThreadedSim(Simulator(faults=Faults(rate_hang=1.0))) as s:
        with pytest.raises(httpx2.ReadTimeout):
            httpx2.post(s.url + "/v1/chat/completions", json=CHAT, timeout=0.2)
        assert s.sim.stats.wait_for(lambda st: st.cancelled == 1 and st.active == 0)
        assert s.sim.stats.injected == {"hang": 1}


def test_reset_sends_rst_without_response() -> None:
    with ThreadedSim(Simulator(faults=Faults(rate_reset=1.0))) as s:
        sock = raw_post(s, "/v1/chat/completions", CHAT)
        with pytest.raises(ConnectionResetError), sock:
            sock.recv(1024)
        with pytest.raises(openai.APIConnectionError):
            sdk(s).chat.completions.create(model="m", messages=MESSAGES)
        stats = s.sim.stats
        assert (stats.aborted, stats.completed, stats.active) == (2, 0, 0)
        assert stats.injected == {"reset": 2}


def test_disconnect_after_chunks_drops_stream_without_done() -> None:
    with ThreadedSim(Simulator(faults=Faults(disconnect_after_chunks=3))) as s:
        events: list[str] = []
        body = {**CHAT, "stream": True, "max_tokens": 10}
        with (
            pytest.raises(httpx2.RemoteProtocolError),  # an incomplete chunked body
            http(s).stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            assert resp.status_code == 200
            events.extend(line for line in resp.iter_lines() if line)
        assert len(events) == 3 and "[DONE]" not in events[-1]
        # Non-stream requests are unaffected by the standing setting.
        assert http(s).post("/v1/chat/completions", json=CHAT).status_code == 200
        assert (s.sim.stats.aborted, s.sim.stats.completed) == (1, 1)


def test_fail_next_kinds_from_python(sim: ThreadedSim) -> None:
    sim.sim.faults.fail_next = FailNext(1, kind="disconnect", after_chunks=1)
    stream = {**CHAT, "stream": True, "max_tokens": 10}
    with pytest.raises(httpx2.RemoteProtocolError):
        http(sim).post("/v1/chat/completions", json=stream)
    assert len(sse_payloads(http(sim).post("/v1/chat/completions", json=stream).text)) == 12
    sim.sim.faults.fail_next = FailNext(1, kind="reset")
    with pytest.raises(httpx2.TransportError):
        http(sim).post("/v1/chat/completions", json=CHAT)
    assert sim.sim.stats.injected == {"disconnect": 1, "reset": 1}


def test_fault_endpoint_validates_and_replaces() -> None:
    with ThreadedSim(Simulator(faults=Faults(rate_503=1.0))) as s:
        client = http(s)
        assert client.get("/sim/faults").json()["rate_503"] == 1.0
        for bad in ({"rate_5xx": 1}, {"rate_503": 2}, {"fail_next": {"count": 1, "kind": "x"}}):
            assert client.post("/sim/faults", json=bad).status_code == 400
        assert client.post("/sim/faults", json={"extra_ttft_ms": 0}).json()["rate_503"] == 0
        assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 200


def test_faults_from_dict_and_draw() -> None:
    faults = Faults.from_dict({"fail_next": {"count": 2, "kind": "hang"}, "rate_503": 1.0})
    rng = random.Random(0)
    drawn = [faults.draw(rng, False), faults.draw(rng, False)]
    assert [a.label if a else None for a in drawn] == ["hang", "hang"]
    assert faults.fail_next is None
    action = faults.draw(rng, True)
    assert action is not None and action.label == "503"
    with pytest.raises(ValueError):
        Faults.from_dict({"nope": 1})


# -- running ------------------------------------------------------------------------------------


async def test_serve_in_the_current_loop_and_close_drops_hanging_requests() -> None:
    sim = Simulator(faults=Faults(fail_next=FailNext(1)))
    running = await serve(sim)
    assert running.url == f"http://127.0.0.1:{running.port}"
    async with aiohttp.ClientSession() as session:
        async with session.post(running.url + "/v1/completions", json={"prompt": "x"}) as resp:
            assert resp.status == 503  # fail_next is consumed by the first request...
        async with session.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200 and (await resp.json())["object"] == "chat.completion"
        sim.faults.fail_next = FailNext(1, kind="hang")  # ...so arm a hang for the next one
        hanging = asyncio.create_task(session.post(running.url + "/v1/chat/completions", json=CHAT))
        assert await asyncio.to_thread(sim.stats.wait_for, lambda st: st.active == 1)
        start = time.perf_counter()
        await running.close()
        assert time.perf_counter() - start < 1.0
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await hanging
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(running.url + "/health")
    assert sim.stats.active == 0


def test_threaded_sim_serves_several_simulators() -> None:
    sims = [Simulator(model="a"), Simulator(model="b")]
    with ThreadedSim(*sims) as s:
        urls = s.urls
        assert len(urls) == 2 and urls[0] != urls[1]
        assert [httpx2.get(u + "/v1/models").json()["data"][0]["id"] for u in urls] == ["a", "b"]
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(urls[0] + "/health")


def test_stats_wait_for_times_out() -> None:
    stats = SimStats()
    start = time.perf_counter()
    assert not stats.wait_for(lambda st: st.completed == 1, timeout=0.05)
    assert time.perf_counter() - start >= 0.05


def test_cli_serves_replicas_until_interrupted() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--profile", "slow-gpu", "--itl-ms", "1", "--rate-503", "0.5"])
    assert (args.profile, args.itl_ms, args.rate_503, args.max_num_seqs) == (
        "slow-gpu",
        1.0,
        0.5,
        None,
    )
    code = (
        "import argparse, sys\nfrom selfhost.sim import add_arguments, run_cli\n"
        "p = argparse.ArgumentParser()\nadd_arguments(p)\nsys.exit(run_cli(p.parse_args()))"
    )
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "--port",
            "0",
            "--replicas",
            "2",
            "--profile",
            "instant",
            "--model",
            "cli-model",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as proc:
        _check_cli(proc)


def _check_cli(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        urls = [line.split()[0] for line in lines]
        assert all("replica=" in line and "model=cli-model" in line for line in lines)
        for url in urls:
            assert httpx2.get(url + "/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
