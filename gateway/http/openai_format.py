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
from gateway.http.validation import (
    BOOLEAN,
    INTEGER,
    LIST,
    OBJECT,
    STRING,
    JsonSchema,
    Rule,
    Rules,
    at_least,
    between,
    check_fields,
    is_int,
    one_of,
    parse_json,
)
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


STOP = Rule(_stop, "a string or a list of at most 4 strings", {"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]})
# Prompts and embedding inputs (required: checked in `canonical`).
PROMPT = Rule(_str_or_tokens, "a string, a list of strings or token ids", {"anyOf": [
    {"type": "string"},
    {"type": "array", "minItems": 1, "items": {"type": "string"}},
    {"type": "array", "minItems": 1, "items": {"type": "integer"}},
    {"type": "array", "minItems": 1,
     "items": {"type": "array", "minItems": 1, "items": {"type": "integer"}}}]})

# Optional fields. `None` always passes: clients send explicit nulls for "default".
_COMMON: Rules = {
    "stream": BOOLEAN,
    "stream_options": OBJECT,
    "temperature": between(0, 2),
    "top_p": between(0, 1),
    "n": at_least(1),
    "max_tokens": at_least(1),
    "seed": INTEGER,
    "stop": STOP,
    "presence_penalty": between(-2, 2),
    "frequency_penalty": between(-2, 2),
    "user": STRING,
}
CHAT_FIELDS: Rules = {
    **_COMMON,
    "max_completion_tokens": at_least(1),
    "tools": LIST,
    "response_format": Rule(lambda v: isinstance(v, dict) and isinstance(v.get("type"), str),
                            "an object with a `type`", {
                                "type": "object", "required": ["type"],
                                "properties": {"type": {"type": "string"}}}),
    "logprobs": BOOLEAN,
    "top_logprobs": between(0, 20, integer=True),
}
COMPLETIONS_FIELDS: Rules = {**_COMMON, "echo": BOOLEAN}
EMBEDDINGS_FIELDS: Rules = {
    "dimensions": at_least(1),
    "encoding_format": one_of("float", "base64"),
    "user": STRING,
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
        if not isinstance(role, str) or role not in _ROLES:  # (a dict cannot be looked up)
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


# Content part type → the rule of its field of the same name: the parts an upstream relies
# on. Other types pass when they are objects with a `type` (providers add new ones).
_PARTS: Rules = {
    "text": STRING,
    "image_url": Rule(lambda v: isinstance(v, str) or (
        isinstance(v, dict) and isinstance(v.get("url"), str)), "an object with a `url`", {
            "anyOf": [{"type": "string"}, {"type": "object", "required": ["url"],
                                           "properties": {"url": {"type": "string"}}}]}),
    "input_audio": Rule(lambda v: isinstance(v, dict) and isinstance(v.get("data"), str),
                        "an object with `data`", {"type": "object", "required": ["data"],
                                                  "properties": {"data": {"type": "string"}}}),
    "refusal": STRING,
    "file": OBJECT,
}


def _check_part(part: Any, param: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise bad_request(f"`{param}` must be an object with a `type`", param=param)
    name = part["type"]
    rule = _PARTS.get(name)
    if rule is not None and not rule.check(part.get(name)):
        raise bad_request(f"`{param}.{name}` must be {rule.expected}", param=f"{param}.{name}")


# What `_check_messages` accepts, as JSON Schema (for the API document).
MESSAGES_SCHEMA: JsonSchema = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role"], "properties": {
        "role": {"type": "string", "enum": sorted(_ROLES)},
        "content": {"anyOf": [
            {"type": "string"}, {"type": "null"},
            {"type": "array", "items": {"oneOf": [
                {"type": "object", "required": ["type", name],
                 "properties": {"type": {"const": name}, name: rule.schema}}
                for name, rule in _PARTS.items()]}}]}}}}


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
        check_fields(body, CHAT_FIELDS)
    elif op == "completions":
        if not PROMPT.check(body.get("prompt")):
            raise bad_request("`prompt` is required: a string, a list of strings or token ids",
                              param="prompt")
        check_fields(body, COMPLETIONS_FIELDS)
    else:
        if not PROMPT.check(body.get("input")):
            raise bad_request("`input` is required: a string, a list of strings or token ids",
                              param="input")
        check_fields(body, EMBEDDINGS_FIELDS)
        return CanonicalRequest(op, model, body, request_id=request_id)
    stream, include_usage = _stream_flags(body)
    return CanonicalRequest(op, model, body, stream, include_usage, request_id)


def error_body(err: GatewayError) -> bytes:
    return orjson.dumps({"error": {"message": err.message, "type": err.type,
                                   "param": err.param, "code": err.code}})


_DONE = b"data: [DONE]\n\n"
_MODEL = b'"model":'


def with_model(data: bytes, model: bytes) -> bytes:
    """An answer or chunk naming `model` (JSON-escaped), the name the client asked for,
    where the upstream named its own (`x-turnout-deployment` says where it ran). A scan,
    not a parse: the first `"model":` of an OpenAI object is its own (any in the text is
    escaped), and it runs on every streamed chunk."""
    i = data.find(_MODEL)
    while i > 0 and data[i - 1] == 0x5C:  # `\"model\":` inside a string: not the key
        i = data.find(_MODEL, i + 1)
    if i < 0:
        return data
    start = i + len(_MODEL)
    if data[start:start + 1] == b" ":
        start += 1
    if data[start:start + 1] != b'"':
        return data
    end = data.find(b'"', start + 1)
    if end < 0 or data[end - 1] == 0x5C:  # an escaped quote in a name: leave it be
        return data
    return data[:start + 1] + model + data[end:]


def _model_bytes(req: CanonicalRequest) -> bytes:
    return orjson.dumps(req.model)[1:-1]


class OpenAIStreamEncoder:
    """Canonical chunks are OpenAI chunks already: frame them as SSE (named after the
    model the client asked for), end with [DONE]."""

    __slots__ = ("_model",)

    def __init__(self, model: bytes) -> None:
        self._model = model

    def chunk(self, chunk: StreamChunk) -> bytes:
        return encode(with_model(chunk.data, self._model)) if chunk.data else b""

    def end(self) -> bytes:
        return _DONE

    def error(self, err: GatewayError) -> bytes:
        return encode(error_body(err))


class OpenAIFormat:
    api_key_header: bytes | None = None

    def parse(self, op: Operation, raw: bytes, request_id: str) -> CanonicalRequest:
        return canonical(op, raw, request_id)

    def error_body(self, err: GatewayError, request_id: str) -> bytes:
        return error_body(err)

    def completion_body(self, req: CanonicalRequest, body: bytes) -> bytes:
        return with_model(body, _model_bytes(req))

    def stream_encoder(self, req: CanonicalRequest) -> OpenAIStreamEncoder:
        return OpenAIStreamEncoder(_model_bytes(req))


OPENAI = OpenAIFormat()
