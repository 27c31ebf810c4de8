"""The vLLM/OpenAI simulator, over real sockets: wire formats, timing, metrics, faults, cancels."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

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

ROOT = Path(__file__).resolve().parents[3]
MESSAGES: list[Any] = [  # Any: the SDK wants its TypedDicts
    {"role": "system", "content": "You are terse."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "tell me"}, {"type": "text", "text": "a story"}],
    },
]
PROMPT_TOKENS = 3 + 4 + 4 + 4  # words + 4 per message
CHAT: dict[str, Any] = {"model": "m", "messages": MESSAGES}
# Never answers on its own: requests stay queued / in prefill until the test lets go.
STUCK = SimProfile.named("instant", base_ttft_ms=600_000)


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("instant")) as running:
        yield running


_OPEN: list[openai.OpenAI | httpx2.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def sdk(s: ThreadedSim, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    _OPEN.append(openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", **kwargs))
    return _OPEN[-1]  # type: ignore[return-value]


def http(s: ThreadedSim) -> httpx2.Client:
    _OPEN.append(httpx2.Client(base_url=s.url, timeout=5))
    return _OPEN[-1]  # type: ignore[return-value]


def sse_payloads(text: str) -> list[str]:
    """Strict SSE parse: only `data: ...` lines, each event terminated by a blank line."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: ") :] for e in events]


def raw_post(s: ThreadedSim, path: str, body: dict[str, Any]) -> socket.socket:
    """Send one request on a fresh socket and leave the response unread."""
    data = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", s.servers[0].port), timeout=5)
    head = f"POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    buf = b""
    while buf.count(marker) < count:
        data = sock.recv(65536)
        assert data, f"connection closed after {buf!r}"
        buf += data
    return buf


def scrape(s: ThreadedSim) -> dict[tuple[str, str], float]:
    """Samples keyed by (name, finished_reason/le label or ""), all for model sim-model."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(http(s).get("/metrics").text):
        for sample in family.samples:
            assert sample.labels["model_name"] == "sim-model"
            assert sample.labels["engine"] == "0"
            extra = sample.labels.get("finished_reason") or sample.labels.get("le") or ""
            out[(sample.name, extra)] = sample.value
    return out


# -- content and wire format -------------------------------------------------------------------


def test_chat_is_deterministic_with_usage_and_model_echo(sim: ThreadedSim) -> None:
    client = sdk(sim)
    first = client.chat.completions.create(model="any-name", messages=MESSAGES)
    again = client.chat.completions.create(model="other", messages=MESSAGES)
    other = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "something else"}]
    )
    text = first.choices[0].message.content
    assert text is not None and text == again.choices[0].message.content
    assert text != other.choices[0].message.content
    assert first.model == "any-name" and first.object == "chat.completion"
    assert first.id.startswith("chatcmpl-")
    assert first.choices[0].finish_reason == "stop"
    assert len(text.split()) == 16 and text.startswith(" ")  # one " word" per token
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (PROMPT_TOKENS, 16)
    assert first.usage.total_tokens == PROMPT_TOKENS + 16
    limited = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        max_completion_tokens=5,
        seed=3,
        temperature=0.2,
    )
    assert limited.choices[0].finish_reason == "length"
    assert limited.choices[0].message.content == "".join(" " + w for w in text.split()[:5])
    assert limited.usage is not None and limited.usage.completion_tokens == 5


def test_min_tokens_and_default_length() -> None:
    with ThreadedSim(Simulator(max_tokens_default=3)) as s:
        client = http(s)
        short = client.post("/v1/chat/completions", json=CHAT).json()
        assert short["usage"]["completion_tokens"] == 3
        assert short["choices"][0]["finish_reason"] == "stop"
        longer = client.post(
            "/v1/chat/completions", json={**CHAT, "min_tokens": 7, "ignore_eos": True}
        )
        assert longer.json()["usage"]["completion_tokens"] == 7
        bad = client.post("/v1/chat/completions", json={**CHAT, "min_tokens": 9, "max_tokens": 2})
        assert bad.status_code == 400


def test_chat_stream_wire_format(sim: ThreadedSim) -> None:
    whole = http(sim).post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}).json()
    resp = http(sim).post("/v1/chat/completions", json={**CHAT, "max_tokens": 4, "stream": True})
    assert resp.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 1 + 4  # role chunk, then one chunk per token
    assert {(c["id"], c["created"], c["object"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "chat.completion.chunk")
    }
    assert all("usage" not in c for c in chunks)  # include_usage not asked for
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["length"]
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]


def test_chat_stream_include_usage(sim: ThreadedSim) -> None:
    body = {**CHAT, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    chunks = [
        orjson.loads(p)
        for p in sse_payloads(http(sim).post("/v1/chat/completions", json=body).text)[:-1]
    ]
    assert [c["usage"] for c in chunks[:-1]] == [None] * 4
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["usage"]["total_tokens"] == PROMPT_TOKENS + 3
    # The official SDK agrees with the wire format.
    stream = sdk(sim).chat.completions.create(
        model="m",
        messages=MESSAGES,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    parsed = list(stream)
    assert parsed[-1].usage is not None and parsed[-1].usage.completion_tokens == 3
    assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) == "".join(
        c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]
    )


def test_continuous_usage_stats(sim: ThreadedSim) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {**CHAT, "max_tokens": 3, "stream": True, "stream_options": options}
    payloads = sse_payloads(http(sim).post("/v1/chat/completions", json=body).text)[:-1]
    counts = [orjson.loads(p)["usage"]["completion_tokens"] for p in payloads]
    assert counts == [0, 1, 2, 3, 3]  # role chunk, 3 tokens, the usage chunk


def test_stream_options_without_stream_is_rejected(sim: ThreadedSim) -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}}
    resp = http(sim).post("/v1/chat/completions", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "stream_options"


def test_completions(sim: ThreadedSim) -> None:
    client = sdk(sim)
    one = client.completions.create(model="m", prompt="once upon a time", max_tokens=5)
    assert one.object == "text_completion" and one.id.startswith("cmpl-")
    assert one.choices[0].finish_reason == "length" and len(one.choices[0].text.split()) == 5
    assert one.usage is not None and one.usage.prompt_tokens == 4
    many = client.completions.create(model="m", prompt=["once upon a time", "x"], max_tokens=5, n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == one.choices[0].text != many.choices[1].text
    assert many.usage is not None and many.usage.completion_tokens == 20
    ids = client.completions.create(model="m", prompt=[1, 2, 3], max_tokens=2)
    assert ids.usage is not None and ids.usage.prompt_tokens == 3
    body = {
        "model": "m",
        "prompt": "once upon a time",
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = [
        orjson.loads(p)
        for p in sse_payloads(http(sim).post("/v1/completions", json=body).text)[:-1]
    ]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == one.choices[0].text
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_embeddings(sim: ThreadedSim) -> None:
    client = sdk(sim)
    # The SDK asks for base64 by default and decodes it.
    result = client.embeddings.create(model="m", input=["hello world", "bye"], dimensions=8)
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [8, 8] and vectors[0] != vectors[1]
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert result.usage.prompt_tokens == 3
    floats = http(sim).post(
        "/v1/embeddings",
        json={"model": "m", "input": "hello world", "dimensions": 8, "encoding_format": "float"},
    )
    assert floats.json()["data"][0]["embedding"] == pytest.approx(vectors[0], rel=1e-6)
    default = http(sim).post("/v1/embeddings", json={"model": "m", "input": [[1, 2, 3], [4]]})
    data = default.json()
    assert [len(d["embedding"]) for d in data["data"]] == [16, 16]
    assert data["object"] == "list" and data["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_models_and_health(sim: ThreadedSim) -> None:
    assert [m.id for m in sdk(sim).models.list()] == ["sim-model"]
    health = http(sim).get("/health")
    assert health.status_code == 200 and health.content == b""
    sim.sim.faults.unhealthy = True
    assert http(sim).get("/health").status_code == 503


def test_bad_requests_use_openai_error_shape() -> None:
    with ThreadedSim(Simulator(strict_model=True, model="served")) as s:
        client = http(s)
        cases = [
            ("/v1/chat/completions", b"{not json", None),
            ("/v1/chat/completions", b'{"model": "served"}', "messages"),
            (
                "/v1/chat/completions",
                b'{"model": "served", "messages": [{"content": "x"}]}',
                "messages[0]",
            ),
            ("/v1/completions", b'{"model": "served"}', "prompt"),
            ("/v1/embeddings", b'{"model": "served", "input": []}', "input"),
        ]
        for path, content, param in cases:
            resp = client.post(path, content=content)
            assert resp.status_code == 400, (path, content)
            error = resp.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error" and error["param"] == param
        with pytest.raises(openai.NotFoundError) as info:
            sdk(s).chat.completions.create(model="nope", messages=MESSAGES)
        assert info.value.code == "model_not_found"
        assert client.post("/v1/chat/completions", json={**CHAT, "model": "served"}).is_success
        assert s.sim.stats.by_status == {400: 5, 404: 1, 200: 1}


def test_continue_final_message_continues_the_same_text(sim: ThreadedSim) -> None:
    client = sdk(sim)
    full = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10)
    full_text = full.choices[0].message.content
    assert full_text is not None
    prefix = "".join(" " + w for w in full_text.split()[:4])
    continued = [*MESSAGES, {"role": "assistant", "content": prefix}]
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    rest = client.chat.completions.create(
        model="m",
        messages=continued,
        max_tokens=6,
        extra_body=extra,
    )
    assert prefix + (rest.choices[0].message.content or "") == full_text
    assert rest.usage is not None and rest.usage.completion_tokens == 6
    streamed = client.chat.completions.create(
        model="m",
        messages=continued,
        max_tokens=6,
        extra_body=extra,
        stream=True,
    )
    assert prefix + "".join(c.choices[0].delta.content or "" for c in streamed) == full_text
    # Without the flag, a trailing assistant message is just more prompt.
    plain = client.chat.completions.create(model="m", messages=continued, max_tokens=6)
    assert not full_text.startswith(prefix + (plain.choices[0].message.content or ""))
    both = http(sim).post(
        "/v1/chat/completions",
        json={**CHAT, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert both.status_code == 400


def test_last_request_headers_and_body_are_recorded(sim: ThreadedSim) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client = sdk(sim, default_headers={"traceparent": traceparent})
    client.chat.completions.create(model="m", messages=MESSAGES, user="u1")
    http(sim).get("/health")  # probes must not overwrite what tests inspect
    stats = sim.sim.stats
    assert stats.last_headers["authorization"] == "Bearer sk-test"
    assert stats.last_headers["traceparent"] == traceparent
    assert stats.last_body["messages"] == MESSAGES and stats.last_body["user"] == "u1"
    assert stats.last_path == "/v1/chat/completions"
    assert stats.requests_total == 1 and stats.by_path["/health"] == 1
    snapshot = http(sim).get("/sim/stats").json()
    assert snapshot["completed"] == 1 and snapshot["by_status"] == {"200": 1}


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
