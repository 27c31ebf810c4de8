"""The vLLM/OpenAI simulator, over real sockets: content and wire formats."""

from __future__ import annotations

import math

import openai
import orjson
import pytest

from selfhost.sim import (
    Simulator,
    ThreadedSim,
)
from tests.support.sim_clients import (
    CHAT,
    MESSAGES,
    PROMPT_TOKENS,
    http,
    sdk,
    sse_payloads,
)

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
