from __future__ import annotations

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.http.openai_format import canonical


def parse(op: str, body: object) -> object:
    return canonical(op, orjson.dumps(body), "rid")  # type: ignore[arg-type]


def error(op: str, raw: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        canonical(op, raw, "rid")  # type: ignore[arg-type]
    assert info.value.status == 400
    return info.value


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_chat_stream_flags() -> None:
    req = parse("chat", {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert req.stream and req.include_usage and req.model == "m"  # type: ignore[attr-defined]
    req = parse("chat", {**CHAT, "stream": True})
    assert req.stream and not req.include_usage  # type: ignore[attr-defined]


@pytest.mark.parametrize(("raw", "param", "fragment"), [
    (b"{not json", None, "not valid JSON"),
    (b"", None, "empty"),
    (b"[1,2]", None, "JSON object"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model", "`model` is required"),
    (b'{"model": "m"}', "messages", "`messages` is required"),
    (b'{"model": "m", "messages": []}', "messages", "non-empty"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role",
     "must be one of"),
    (b'{"model": "m", "messages": [{"role": "user"}]}', "messages[0].content", "required"),
    (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content",
     "string or a list"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5},'
     b' 7, null]}]}', "messages[0].content[0].text", "must be a string"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text",'
     b' "text": "a"}, 7]}]}', "messages[0].content[1]", "object with a `type`"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url",'
     b' "image_url": {}}]}]}', "messages[0].content[0].image_url", "with a `url`"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}',
     "temperature", "between 0 and 2"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
     "max_tokens", ">= 1"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     "stream", "boolean"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}],'
     b' "stream_options": {"include_usage": true}}', "stream_options", "only allowed"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}],'
     b' "stop": ["a","b","c","d","e"]}',
     "stop", "at most 4"),
])
def test_chat_errors_name_the_param(raw: bytes, param: str | None, fragment: str) -> None:
    err = error("chat", raw)
    assert err.param == param
    assert fragment in err.message


def test_assistant_tool_call_turn_may_omit_content() -> None:
    parse("chat", {"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]})


def test_explicit_nulls_mean_default() -> None:
    parse("chat", {**CHAT, "temperature": None, "max_tokens": None, "stream": None})


def test_completions_and_embeddings_inputs() -> None:
    parse("completions", {"model": "m", "prompt": "hello"})
    parse("completions", {"model": "m", "prompt": [[1, 2], [3]]})
    assert error("completions", b'{"model": "m"}').param == "prompt"
    assert error("completions", b'{"model": "m", "prompt": [1, "a"]}').param == "prompt"
    parse("embeddings", {"model": "m", "input": ["a", "b"], "dimensions": 8})
    assert error("embeddings", b'{"model": "m", "input": []}').param == "input"
    assert error("embeddings", b'{"model": "m", "input": "a", "dimensions": 0}').param == (
        "dimensions")
