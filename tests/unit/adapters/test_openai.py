from __future__ import annotations

import orjson

from adapters.openai import OpenAIAdapter, retry_after_seconds
from gateway.canonical import CanonicalRequest, ErrorClass, FailureKind, Target

ADAPTER = OpenAIAdapter()
TARGET = Target("http://up/v1", "upstream-model", "sk-test", {"x-extra": "1"})


def chat(stream: bool = False, include_usage: bool = False) -> CanonicalRequest:
    body = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if include_usage:
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": False}
    return CanonicalRequest("chat", "public", body, stream, include_usage)


def test_build_request_renames_model_and_authenticates() -> None:
    req = chat()
    up = ADAPTER.build_request(req, TARGET)
    assert up.url == "http://up/v1/chat/completions"
    assert up.headers["authorization"] == "Bearer sk-test" and up.headers["x-extra"] == "1"
    body = orjson.loads(up.body)
    assert body["model"] == "upstream-model" and "stream_options" not in body
    assert req.body["model"] == "public"  # the client's body is not mutated


def test_streams_always_ask_for_usage_and_keep_other_options() -> None:
    body = orjson.loads(ADAPTER.build_request(chat(stream=True), TARGET).body)
    assert body["stream_options"] == {"include_usage": True}
    body = orjson.loads(ADAPTER.build_request(chat(True, True), TARGET).body)
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": False}


def test_paths_per_operation() -> None:
    for op, path in [("completions", "/completions"), ("embeddings", "/embeddings")]:
        req = CanonicalRequest(op, "m", {"model": "m"})  # type: ignore[arg-type]
        assert ADAPTER.build_request(req, TARGET).url == "http://up/v1" + path


USAGE_CHUNK = b'{"id":"c","object":"chat.completion.chunk","choices":[],' \
              b'"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,' \
              b'"prompt_tokens_details":{"cached_tokens":2}}}'
TEXT_CHUNK = b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}'


def test_usage_chunk_dropped_when_client_did_not_ask() -> None:
    tr = ADAPTER.stream_translator(chat(stream=True))
    assert [c.data for c in tr.feed(None, TEXT_CHUNK)] == [TEXT_CHUNK]
    (usage_chunk,) = tr.feed(None, USAGE_CHUNK)
    assert usage_chunk.data == b"" and usage_chunk.usage_only
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens,
            usage_chunk.usage.cached_tokens) == (5, 7, 2)
    assert not tr.finished
    assert tr.feed(None, b"[DONE]") == [] and tr.finished


def test_usage_chunk_kept_when_client_asked() -> None:
    tr = ADAPTER.stream_translator(chat(stream=True, include_usage=True))
    (chunk,) = tr.feed(None, USAGE_CHUNK)
    assert chunk.data == USAGE_CHUNK and chunk.usage is not None


def test_error_classes() -> None:
    f = ADAPTER.classify_error(429, {"retry-after": "3"},
                               b'{"error":{"message":"slow down","type":"rate_limit"}}')
    assert f.kind is FailureKind.RATE_LIMITED and f.retry_after == 3
    assert f.error_class is ErrorClass.RETRYABLE and f.message == "slow down"
    assert ADAPTER.classify_error(503, {}, b"oops").error_class is ErrorClass.RETRYABLE
    f = ADAPTER.classify_error(400, {}, b'{"error":{"message":"bad","code":null}}')
    assert f.kind is FailureKind.REJECTED and f.error_class is ErrorClass.FINAL
    f = ADAPTER.classify_error(
        400, {}, b'{"object":"error","message":"This model\'s maximum context length is 512'
                 b' tokens","code":400}')
    assert f.kind is FailureKind.CONTEXT_LENGTH and f.error_class is ErrorClass.FINAL
    f = ADAPTER.classify_error(400, {}, b'{"error":{"message":"no","code":"content_filter"}}')
    assert f.kind is FailureKind.CONTENT_POLICY


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "2"}) == 2
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_azure_deployment_url_and_api_key_header() -> None:
    t = Target("https://r.openai.azure.com", "gpt-4o prod", "az",
               options={"api_version": "2024-10-21", "auth": "api-key"})
    up = ADAPTER.build_request(chat(), t)
    assert up.url == ("https://r.openai.azure.com/openai/deployments/gpt-4o%20prod"
                      "/chat/completions?api-version=2024-10-21")
    assert up.headers["api-key"] == "az" and "authorization" not in up.headers
