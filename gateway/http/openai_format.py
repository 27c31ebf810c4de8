"""The OpenAI client format (/v1/chat/completions, /v1/completions, /v1/embeddings):
request bodies validated into canonical requests (which are OpenAI-shaped, so parsing is
all there is), answers and streams relayed as they are, errors in OpenAI's shape with
OpenAI's status codes. Unknown fields pass through untouched (providers add new ones
often).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.canonical import CanonicalRequest, Operation, StreamChunk
from gateway.errors import GatewayError, bad_request
from gateway.http.validation import Check, at_least, between, check_fields, is_int, parse_json
from gateway.wire.sse import encode

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

def _stop(v: Any) -> bool:
    return isinstance(v, str) or (
        isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v)
    )


def _str_or_tokens(v: Any) -> bool:
    """str | list[str] | list[int] | list[list[int]], non-empty: prompts and inputs."""
    if isinstance(v, str):
        return True
    if not isinstance(v, list) or not v:
        return False
    first = v[0]
    if isinstance(first, str):
        return all(isinstance(x, str) for x in v)
    if is_int(first):
        return all(is_int(x) for x in v)
    return all(isinstance(x, list) and x and all(is_int(t) for t in x) for x in v)


# Optional fields: (check, what the message says is expected). `None` always passes:
# clients send explicit nulls for "default".
_COMMON: dict[str, tuple[Check, str]] = {
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "temperature": (between(0, 2), "a number between 0 and 2"),
    "top_p": (between(0, 1), "a number between 0 and 1"),
    "n": (at_least(1), "an integer >= 1"),
    "max_tokens": (at_least(1), "an integer >= 1"),
    "seed": (is_int, "an integer"),
    "stop": (_stop, "a string or a list of at most 4 strings"),
    "presence_penalty": (between(-2, 2), "a number between -2 and 2"),
    "frequency_penalty": (between(-2, 2), "a number between -2 and 2"),
    "user": (lambda v: isinstance(v, str), "a string"),
}
_CHAT = {
    **_COMMON,
    "max_completion_tokens": (at_least(1), "an integer >= 1"),
    "tools": (lambda v: isinstance(v, list), "a list"),
    "response_format": (lambda v: isinstance(v, dict) and isinstance(v.get("type"), str),
                        "an object with a `type`"),
    "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
    "top_logprobs": (between(0, 20), "an integer between 0 and 20"),
}
_COMPLETIONS = {**_COMMON, "echo": (lambda v: isinstance(v, bool), "a boolean")}
_EMBEDDINGS: dict[str, tuple[Check, str]] = {
    "dimensions": (at_least(1), "an integer >= 1"),
    "encoding_format": (lambda v: v in ("float", "base64"), "'float' or 'base64'"),
    "user": (lambda v: isinstance(v, str), "a string"),
}


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` is required and must be a non-empty string", param="model")
    return model


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` is required and must be a non-empty list",
                          param="messages")
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"`{param}` must be an object", param=param)
        role = m.get("role")
        if role not in _ROLES:
            raise bad_request(
                f"`{param}.role` must be one of {', '.join(sorted(_ROLES))}",
                param=f"{param}.role",
            )
        content = m.get("content")
        if content is None:
            if role != "assistant":  # assistant turns may carry only tool_calls
                raise bad_request(f"`{param}.content` is required", param=f"{param}.content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                _check_part(part, f"{param}.content[{j}]")
        elif not isinstance(content, str):
            raise bad_request(f"`{param}.content` must be a string or a list of parts",
                              param=f"{param}.content")


# Content part type → (its field, what that must be): the parts an upstream relies on.
# Other types pass when they are objects with a `type` (providers add new ones).
_PARTS: dict[str, tuple[str, Check, str]] = {
    "text": ("text", lambda v: isinstance(v, str), "a string"),
    "image_url": ("image_url", lambda v: isinstance(v, str) or (
        isinstance(v, dict) and isinstance(v.get("url"), str)), "an object with a `url`"),
    "input_audio": ("input_audio", lambda v: isinstance(v, dict) and isinstance(
        v.get("data"), str), "an object with `data`"),
    "refusal": ("refusal", lambda v: isinstance(v, str), "a string"),
    "file": ("file", lambda v: isinstance(v, dict), "an object"),
}


def _check_part(part: Any, param: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise bad_request(f"`{param}` must be an object with a `type`", param=param)
    rule = _PARTS.get(part["type"])
    if rule is not None:
        name, check, expected = rule
        if not check(part.get(name)):
            raise bad_request(f"`{param}.{name}` must be {expected}", param=f"{param}.{name}")


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") is True
    opts = body.get("stream_options")
    include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
    if opts is not None and not stream:
        raise bad_request("`stream_options` is only allowed when `stream` is true",
                          param="stream_options")
    return stream, include_usage


def canonical(op: Operation, raw: bytes, request_id: str) -> CanonicalRequest:
    body = parse_json(raw)
    model = _model(body)
    if op == "chat":
        _check_messages(body.get("messages"))
        check_fields(body, _CHAT)
    elif op == "completions":
        if not _str_or_tokens(body.get("prompt")):
            raise bad_request("`prompt` is required: a string, a list of strings or token ids",
                              param="prompt")
        check_fields(body, _COMPLETIONS)
    else:
        if not _str_or_tokens(body.get("input")):
            raise bad_request("`input` is required: a string, a list of strings or token ids",
                              param="input")
        check_fields(body, _EMBEDDINGS)
        return CanonicalRequest(op, model, body, request_id=request_id)
    stream, include_usage = _stream_flags(body)
    return CanonicalRequest(op, model, body, stream, include_usage, request_id)


def error_body(err: GatewayError) -> bytes:
    return orjson.dumps({"error": {"message": err.message, "type": err.type,
                                   "param": err.param, "code": err.code}})


_DONE = b"data: [DONE]\n\n"


class OpenAIStreamEncoder:
    """Canonical chunks are OpenAI chunks already: frame them as SSE, end with [DONE]."""

    __slots__ = ()

    def chunk(self, chunk: StreamChunk) -> bytes:
        return encode(chunk.data) if chunk.data else b""

    def end(self) -> bytes:
        return _DONE

    def error(self, err: GatewayError) -> bytes:
        return encode(error_body(err))


_ENCODER = OpenAIStreamEncoder()


class OpenAIFormat:
    api_key_header: bytes | None = None

    def parse(self, op: Operation, raw: bytes, request_id: str) -> CanonicalRequest:
        return canonical(op, raw, request_id)

    def error_body(self, err: GatewayError, request_id: str) -> bytes:
        return error_body(err)

    def completion_body(self, req: CanonicalRequest, body: bytes) -> bytes:
        return body

    def stream_encoder(self, req: CanonicalRequest) -> OpenAIStreamEncoder:
        return _ENCODER


OPENAI = OpenAIFormat()
