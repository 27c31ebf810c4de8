"""Tests against a REAL vLLM server running on the CPU with a tiny random-weight model.

The first section pins down vLLM behaviour the gateway relies on; the second puts the
gateway in front of it. One server is started per session (~17 s when the venv and model
exist; `python -m selfhost.vllm_cpu setup` builds them). These tests never skip: if vLLM
cannot start, every test here errors with the server's log tail.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from selfhost import vllm_cpu
from selfhost.sim import FailNext, Faults, Simulator, ThreadedSim
from selfhost.vllm_cpu import VllmServer
from tests.support.procs import Gateway

pytestmark = pytest.mark.vllm

MODEL = vllm_cpu.DEFAULT_SERVED_NAME
STARTUP_TIMEOUT_S = 300.0


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VllmServer]:
    """One vLLM server for the whole session, on a free port."""
    try:
        venv = vllm_cpu.ensure_venv()
        model_dir = vllm_cpu.ensure_tiny_model(venv=venv)
    except vllm_cpu.VllmError as exc:
        pytest.fail(f"building the vLLM venv or tiny model failed:\n{exc}", pytrace=False)
    server = vllm_cpu.launch(model_dir, port=vllm_cpu.free_port(), venv=venv)
    try:
        startup_s = server.wait_ready(STARTUP_TIMEOUT_S)
    except vllm_cpu.VllmError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    print(f"\nvLLM ready at {server.url} after {startup_s:.1f}s (log: {server.log_path})")
    yield server
    server.stop()


# --------------------------------------------------------------------------- helpers


def _connection(server: VllmServer, timeout: float = 120.0) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def _request(server: VllmServer, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    conn = _connection(server)
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, body=payload, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _post(server: VllmServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, raw = _request(server, "POST", path, body)
    assert status == 200, raw[:2000]
    result: dict[str, Any] = json.loads(raw)
    return result


def _metrics(server: VllmServer) -> str:
    status, raw = _request(server, "GET", "/metrics")
    assert status == 200
    return raw.decode()


def _metric(text: str, name: str) -> float:
    """Sum of every sample of `name` (all label sets) in Prometheus text format."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} not in /metrics"
    return total


def _wait_metric(server: VllmServer, name: str, want: float, timeout: float) -> float:
    """Poll /metrics until `name` equals `want`; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while (value := _metric(_metrics(server), name)) != want:
        assert time.monotonic() < deadline, f"{name} still {value} after {timeout:.1f}s"
        time.sleep(0.05)
    return time.monotonic() - started


def _sse_events(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """Yield the JSON payload of each `data:` line until [DONE]."""
    while line := resp.readline():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


def _chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello! How can I help you today?"}],
        "max_tokens": 8,
    }
    body.update(overrides)
    return body


# --------------------------------------------------------------------------- vLLM itself


def test_stream_include_usage_sends_final_usage_chunk(vllm_server: VllmServer) -> None:
    conn = _connection(vllm_server)
    body = _chat(max_tokens=8, ignore_eos=True, stream=True, stream_options={"include_usage": True})
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type", "").startswith("text/event-stream")
    events = list(_sse_events(resp))
    conn.close()

    *chunks, last = events
    # The usage chunk comes last, alone, with an empty choices list.
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 8
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 8
    assert all(c.get("usage") is None for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_metrics_expose_v1_names(vllm_server: VllmServer) -> None:
    text = _metrics(vllm_server)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:generation_tokens_total",
    ):
        assert f"\n{name}{{" in text, name
    assert f'model_name="{MODEL}"' in text


def test_client_disconnect_aborts_generation(vllm_server: VllmServer) -> None:
    n = 2000  # several seconds of decoding; --max-model-len 4096 allows up to ~4080
    body = _chat(max_tokens=n, min_tokens=n, ignore_eos=True)

    # Baseline: how long the whole generation takes when nobody hangs up.
    started = time.monotonic()
    full = _post(vllm_server, "/v1/chat/completions", body)
    full_s = time.monotonic() - started
    assert full["usage"]["completion_tokens"] == n

    generated_before = _metric(_metrics(vllm_server), "vllm:generation_tokens_total")
    conn = _connection(vllm_server)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps({**body, "stream": True}),
        headers={"content-type": "application/json"},
    )
    resp = conn.getresponse()
    events = _sse_events(resp)
    for _ in range(5):  # the generation is under way
        next(events)
    running = _metric(_metrics(vllm_server), "vllm:num_requests_running")
    assert running == 1, "the generation should still be running when the client hangs up"

    assert conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)  # a hard hang-up, whatever buffers still hold
    resp.close()
    conn.close()
    drained_s = _wait_metric(vllm_server, "vllm:num_requests_running", 0, timeout=full_s)
    generated = _metric(_metrics(vllm_server), "vllm:generation_tokens_total") - generated_before

    print(
        f"\nfull {n}-token generation: {full_s:.2f}s; after disconnect running->0 in "
        f"{drained_s:.2f}s; tokens generated by the aborted request: {generated:.0f}"
    )
    assert generated < n / 2


def test_continue_final_message(vllm_server: VllmServer) -> None:
    prefix = "Once upon a"
    messages = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": prefix},
    ]
    cont = {"continue_final_message": True, "add_generation_prompt": False}

    # The template leaves the final assistant message open: the prompt ends with the
    # prefix's own tokens, with no <|end|> and no new <|assistant|> header after it.
    rendered = _post(vllm_server, "/tokenize", {"model": MODEL, "messages": messages, **cont})
    fresh = _post(vllm_server, "/tokenize", {"model": MODEL, "messages": messages})
    alone = _post(
        vllm_server, "/tokenize", {"model": MODEL, "prompt": prefix, "add_special_tokens": False}
    )
    assert rendered["tokens"][-alone["count"] :] == alone["tokens"]
    assert fresh["count"] == rendered["count"] + 2  # <|end|><|assistant|>

    result = _post(
        vllm_server,
        "/v1/chat/completions",
        _chat(messages=messages, max_tokens=5, ignore_eos=True, **cont),
    )
    # The prefix counts as prompt tokens and is NOT repeated in the returned content.
    assert result["usage"]["prompt_tokens"] == rendered["count"]
    assert result["usage"]["completion_tokens"] == 5
    assert not result["choices"][0]["message"]["content"].startswith(prefix)

    # With echo, the content is prefix + continuation.
    echoed = _post(
        vllm_server,
        "/v1/chat/completions",
        _chat(messages=messages, max_tokens=5, ignore_eos=True, echo=True, **cont),
    )
    assert echoed["choices"][0]["message"]["content"].startswith(prefix)
    assert echoed["usage"]["completion_tokens"] == 5

    # Both flags at once is a client error.
    status, raw = _request(
        vllm_server,
        "POST",
        "/v1/chat/completions",
        _chat(messages=messages, continue_final_message=True, add_generation_prompt=True),
    )
    assert status == 400, raw[:500]


# --------------------------------------------------------------------------- gateway in front


@pytest.fixture(scope="module")
def gateway(vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway({
        "pools": [{"name": "cpu", "endpoints": [vllm_server.url]}],
        "models": {"tiny": {"deployments": [{"target": "cpu", "model": MODEL}]}},
    }, tmp_path_factory.mktemp("gw-vllm"))
    yield gw
    gw.stop()


def _sdk(gw: Gateway) -> OpenAI:
    return OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


PROMPT: Any = [{"role": "user", "content": "Hello! How can I help you today?"}]


def test_gateway_chat_usage_equals_vllm(gateway: Gateway, vllm_server: VllmServer) -> None:
    via = _sdk(gateway).chat.completions.with_raw_response.create(
        model="tiny", messages=PROMPT, max_tokens=12, extra_body={"ignore_eos": True})
    direct = _post(vllm_server, "/v1/chat/completions",
                   _chat(messages=PROMPT, max_tokens=12, ignore_eos=True))
    reply = via.parse()
    assert via.headers["x-turnout-deployment"] == "cpu/" + vllm_server.url.split("//")[1]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert reply.usage.completion_tokens == direct["usage"]["completion_tokens"] == 12
    assert reply.choices[0].finish_reason == "length"


def test_gateway_stream_usage_equals_vllm(gateway: Gateway, vllm_server: VllmServer) -> None:
    client = _sdk(gateway)
    chunks = list(client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=10, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    direct = _post(vllm_server, "/v1/chat/completions",
                   _chat(messages=PROMPT, max_tokens=10, ignore_eos=True))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        direct["usage"]["prompt_tokens"], direct["usage"]["completion_tokens"])
    assert chunks[-2].choices[0].finish_reason == "length"

    # Without include_usage the gateway still meters (it asks vLLM), but the client sees
    # no usage chunk.
    plain = list(client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=10, stream=True,
        extra_body={"ignore_eos": True}))
    assert all(c.choices and c.usage is None for c in plain)


def test_gateway_completions(gateway: Gateway) -> None:
    comp = _sdk(gateway).completions.create(model="tiny", prompt="Once upon a", max_tokens=6,
                                            extra_body={"ignore_eos": True})
    assert comp.usage is not None and comp.usage.completion_tokens == 6


def test_gateway_client_disconnect_frees_vllm_request(gateway: Gateway,
                                                      vllm_server: VllmServer) -> None:
    n = 2000
    generated_before = _metric(_metrics(vllm_server), "vllm:generation_tokens_total")
    parts = urllib.parse.urlsplit(gateway.url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": n, "min_tokens": n,
            "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    events = _sse_events(resp)
    for _ in range(5):
        next(events)
    assert _metric(_metrics(vllm_server), "vllm:num_requests_running") == 1

    assert conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)
    resp.close()
    conn.close()
    # The gateway drops its upstream connection, so vLLM aborts the generation.
    _wait_metric(vllm_server, "vllm:num_requests_running", 0, timeout=60)
    generated = _metric(_metrics(vllm_server), "vllm:generation_tokens_total") - generated_before
    assert generated < n / 2


def test_gateway_continues_a_broken_stream_on_vllm(vllm_server: VllmServer,
                                                   tmp_path: Path) -> None:
    """A simulated replica drops the stream after 3 tokens; real vLLM continues the partial
    answer (continue_final_message). Greedy decoding makes vLLM's continuation repeatable,
    so the seam is checked exactly: what the client read is the simulator's 3 tokens
    followed by what vLLM produces for that prefix, nothing doubled, nothing lost."""
    body: dict[str, Any] = {"temperature": 0, "ignore_eos": True}
    broken = Simulator("instant", faults=Faults(
        fail_next=FailNext(1, kind="disconnect", after_chunks=4)))  # role chunk + 3 tokens
    with ThreadedSim(broken) as sim:
        gw = Gateway({
            "pools": [{"name": "sim", "endpoints": [sim.url]},
                      {"name": "cpu", "endpoints": [vllm_server.url]}],
            "models": {"tiny": {"deployments": [  # slo-cost: the free simulator first
                {"target": "sim", "model": MODEL, "price": {"input": 0, "output": 0}},
                {"target": "cpu", "model": MODEL, "price": {"input": 1, "output": 1}}]}},
        }, tmp_path)
        try:
            chunks = list(_sdk(gw).chat.completions.create(
                model="tiny", messages=PROMPT, max_tokens=10, stream=True,
                stream_options={"include_usage": True}, extra_body=body))
        finally:
            gw.stop()
        partial = OpenAI(base_url=sim.url + "/v1", api_key="x").chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=3).choices[0].message.content or ""
    assert broken.stats.aborted == 1
    continued = _post(vllm_server, "/v1/chat/completions", _chat(
        messages=[*PROMPT, {"role": "assistant", "content": partial}], max_tokens=7,
        continue_final_message=True, add_generation_prompt=False, **body))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == partial + continued["choices"][0]["message"]["content"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 3 + 7
    assert usage.prompt_tokens > continued["usage"]["prompt_tokens"]  # both prefills counted


def test_anthropic_sdk_through_gateway_to_vllm(gateway: Gateway,
                                               vllm_server: VllmServer) -> None:
    from anthropic import Anthropic

    claude = Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    msg = claude.messages.create(model="tiny", max_tokens=7, messages=PROMPT)
    direct = _post(vllm_server, "/v1/chat/completions", _chat(messages=PROMPT, max_tokens=7))
    # Random weights may stop early at EOS: "end_turn" then, else "max_tokens" at 7.
    assert (msg.stop_reason, msg.usage.output_tokens == 7) in (
        ("max_tokens", True), ("end_turn", False))
    assert msg.usage.input_tokens == direct["usage"]["prompt_tokens"]
    with claude.messages.stream(model="tiny", max_tokens=7, messages=PROMPT) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.usage.output_tokens <= 7 and final.content[0].type == "text"
    assert streamed == final.content[0].text
