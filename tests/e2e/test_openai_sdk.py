"""End to end with the official `openai` SDK against `turnout serve` on a real port,
with simulated upstreams on real ports counting what reaches them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from selfhost.sim import FailNext, Faults, SimProfile, Simulator, ThreadedSim
from tests.support.procs import Gateway, free_port

SECRET = "sk-test-provider-secret-0123456789"
MESSAGES: Any = [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Name three colours"}]


@pytest.fixture(scope="module")
def sims() -> Iterator[ThreadedSim]:
    slow = SimProfile.named("instant", itl_ms=50.0)
    hang = Simulator("instant", faults=Faults(rate_hang=1.0))
    with ThreadedSim(Simulator("instant"), Simulator("instant"), Simulator("instant"),
                     Simulator(slow), hang) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(sims: ThreadedSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    pool_a, pool_b, provider, slow, hang = sims.urls
    config = {
        "routing": {"policy": "least-loaded"},
        "server": {"max_body_bytes": 65536,
                   "timeouts": {"connect_s": 2, "first_token_s": 1, "idle_s": 1, "total_s": 30}},
        "providers": [
            {"name": "prov", "base_url": provider + "/v1", "api_key": SECRET},
            {"name": "slow", "base_url": slow + "/v1"},
            {"name": "hang", "base_url": hang + "/v1"},
            {"name": "down", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        ],
        "pools": [{"name": "gpu", "endpoints": [pool_a, pool_b]}],
        "models": {
            "chat": {"deployments": [{"target": "gpu", "model": "tiny"}]},
            "paid": {"deployments": [{"target": "prov", "model": "gpt-x"}]},
            "slow": {"deployments": [{"target": "slow", "model": "s"}]},
            "hang": {"deployments": [{"target": "hang", "model": "h"}]},
            "down": {"deployments": [{"target": "down", "model": "d"}]},
        },
    }
    gw = Gateway(config, tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()
    assert SECRET not in gw.logs()


@pytest.fixture
def client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key="client-key", max_retries=0)


def direct(sims: ThreadedSim, index: int) -> OpenAI:
    return OpenAI(base_url=sims.urls[index] + "/v1", api_key="x", max_retries=0)


def test_chat_matches_upstream(client: OpenAI, sims: ThreadedSim) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=12)
    reply = raw.parse()
    expected = direct(sims, 0).chat.completions.create(model="tiny", messages=MESSAGES,
                                                       max_tokens=12)
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert reply.usage is not None and expected.usage is not None
    assert reply.usage.completion_tokens == 12 == expected.usage.completion_tokens
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens
    assert reply.choices[0].finish_reason == "length"
    replicas = {"gpu/" + u.split("//")[1] for u in sims.urls[:2]}
    assert raw.headers["x-turnout-deployment"] in replicas
    assert raw.headers["x-turnout-route"].startswith("least-loaded")
    assert len(raw.headers["x-request-id"]) == 24


def test_pool_replicas_share_traffic(client: OpenAI, sims: ThreadedSim) -> None:
    before = [sims.sims[i].stats.requests_total for i in (0, 1)]
    seen = {client.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES).headers["x-turnout-deployment"] for _ in range(6)}
    after = [sims.sims[i].stats.requests_total for i in (0, 1)]
    assert seen == {"gpu/" + u.split("//")[1] for u in sims.urls[:2]}
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]


def test_stream_equals_non_stream_and_hides_usage(client: OpenAI) -> None:
    full = client.chat.completions.create(model="chat", messages=MESSAGES)
    chunks = list(client.chat.completions.create(model="chat", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    # The gateway asked the upstream for usage; the client did not, so never sees it.
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_usage_chunk_when_asked(client: OpenAI) -> None:
    full = client.chat.completions.create(model="chat", messages=MESSAGES)
    chunks = list(client.chat.completions.create(
        model="chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    assert sum(1 for c in chunks if c.usage is not None) == 1


def test_completions_embeddings_models(client: OpenAI, sims: ThreadedSim) -> None:
    comp = client.completions.create(model="chat", prompt="Once upon a time", max_tokens=5)
    assert comp.usage is not None and comp.usage.completion_tokens == 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="chat", prompt="Once upon a time", max_tokens=5, stream=True) if c.choices)
    assert streamed == comp.choices[0].text

    emb = client.embeddings.create(model="chat", input=["a b", "c"], dimensions=8)
    expected = direct(sims, 0).embeddings.create(model="tiny", input=["a b", "c"], dimensions=8)
    assert [d.embedding for d in emb.data] == [d.embedding for d in expected.data]
    assert len(emb.data[0].embedding) == 8

    assert sorted(m.id for m in client.models.list()) == ["chat", "down", "hang", "paid", "slow"]


def test_provider_key_sent_upstream_never_returned(client: OpenAI, sims: ThreadedSim) -> None:
    raw = client.chat.completions.with_raw_response.create(model="paid", messages=MESSAGES)
    assert sims.sims[2].stats.last_headers["authorization"] == f"Bearer {SECRET}"
    assert sims.sims[2].stats.last_body["model"] == "gpt-x"
    assert SECRET not in raw.http_response.text and SECRET not in str(raw.headers)


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
])
def test_invalid_fields_are_400_naming_param(client: OpenAI, kwargs: dict[str, Any],
                                             param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", **kwargs)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param  # type: ignore[index]


def test_malformed_json_and_oversized_body(gateway: Gateway) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b'{"model": ',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 70000}]}
    r = httpx.post(gateway.url + "/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_oversized_body_via_sdk(client: OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x" * 70000}])
    assert info.value.status_code == 413


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert info.value.code == "model_not_found"


def test_a_huge_unknown_model_name_is_quoted_bounded(client: OpenAI) -> None:
    model = "x" * 60_000  # under this gateway's 64 KiB body limit (more: a 413 first)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert info.value.status_code == 404 and info.value.code == "model_not_found"
    assert info.value.param == "model"
    message = info.value.body["message"]  # type: ignore[index]
    assert "x" * 256 + "…" in message  # the name's first 256 characters, then a cut
    assert "x" * 257 not in message and len(message) < 400, len(message)


def test_unknown_route_and_method_in_openai_shape(gateway: Gateway) -> None:
    r = httpx.get(gateway.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(gateway.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_upstream_connect_error_is_502(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="down", messages=MESSAGES)
    assert info.value.status_code == 502 and info.value.code == "upstream_connect_error"
    assert "Traceback" not in info.value.message


def test_upstream_5xx_and_429_are_typed(client: OpenAI, sims: ThreadedSim) -> None:
    provider = sims.sims[2]
    provider.faults.fail_next = FailNext(1, status=500)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="paid", messages=MESSAGES)
    assert info.value.status_code == 502 and info.value.code == "upstream_server_error"

    provider.faults.fail_next = FailNext(1, status=429)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="paid", messages=MESSAGES, stream=True)
    assert info.value.status_code == 503 and info.value.code == "upstream_rate_limited"
    assert info.value.response.headers["retry-after"] == "1"


def test_upstream_4xx_passes_through(client: OpenAI, sims: ThreadedSim) -> None:
    sims.sims[2].faults.fail_next = FailNext(1, status=422)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="paid", messages=MESSAGES)


def test_first_token_timeout_is_504_and_cancels_upstream(client: OpenAI,
                                                         sims: ThreadedSim) -> None:
    hang = sims.sims[4]
    cancelled = hang.stats.cancelled
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="hang", messages=MESSAGES, stream=True)
    assert info.value.status_code == 504 and info.value.code == "upstream_timeout"
    assert hang.stats.wait_for(lambda s: s.cancelled == cancelled + 1 and s.active == 0)


def test_mid_stream_upstream_drop_ends_with_error_event(client: OpenAI,
                                                         sims: ThreadedSim) -> None:
    sims.sims[2].faults.fail_next = FailNext(1, kind="disconnect", after_chunks=3)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="paid", messages=MESSAGES,
                                                    stream=True):
            received.append(chunk)
    assert len(received) == 3
    assert "ended the response before it finished" in info.value.message


def test_client_disconnect_cancels_upstream_stream(gateway: Gateway, sims: ThreadedSim) -> None:
    slow = sims.sims[3]
    cancelled = slow.stats.cancelled
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # 200 tokens x 50 ms is 10 s of generation: the upstream must see the request end now.
    assert slow.stats.wait_for(lambda s: s.cancelled == cancelled + 1 and s.active == 0,
                               timeout=5)


def test_client_disconnect_cancels_non_streamed_request(gateway: Gateway,
                                                       sims: ThreadedSim) -> None:
    slow = sims.sims[3]
    cancelled = slow.stats.cancelled
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 200}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=0.5)
    assert slow.stats.wait_for(lambda s: s.cancelled == cancelled + 1 and s.active == 0,
                               timeout=5)


def test_health_and_readiness(gateway: Gateway, tmp_path: Path) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["healthy_pool_endpoints"] == 2

    dead = Gateway({
        "pools": [{"name": "gpu", "endpoints": [f"http://127.0.0.1:{free_port()}"]}],
        "models": {"m": {"deployments": [{"target": "gpu", "model": "x"}]}},
    }, tmp_path)
    try:
        r = httpx.get(dead.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
    finally:
        dead.stop()


def test_idle_timeout_between_chunks(tmp_path: Path) -> None:
    stalling = Simulator(SimProfile.named("instant", itl_ms=3000.0))
    with ThreadedSim(stalling) as sim:
        gw = Gateway({
            "server": {"timeouts": {"first_token_s": 5, "idle_s": 0.5, "total_s": 30}},
            "providers": [{"name": "p", "base_url": sim.url + "/v1"}],
            "models": {"m": {"deployments": [{"target": "p", "model": "x"}]}},
        }, tmp_path)
        try:
            client = OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
            received = []
            with pytest.raises(openai.APIError) as info:
                for chunk in client.chat.completions.create(model="m", messages=MESSAGES,
                                                            stream=True, max_tokens=5):
                    received.append(chunk)
            assert info.value.code == "upstream_timeout"
            assert len(received) == 2  # the role chunk and the first token, then silence
            assert stalling.stats.wait_for(lambda s: s.cancelled == 1 and s.active == 0)
        finally:
            gw.stop()
