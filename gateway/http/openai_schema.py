"""Validation of OpenAI-shaped request bodies into canonical requests.

Hand-written checks rather than a schema library: the hot path parses once with orjson
and checks only what the gateway relies on or what an upstream would reject with a
worse message. Unknown fields pass through untouched (providers add new ones often).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.canonical import CanonicalRequest, Operation
from gateway.errors import GatewayError, bad_request

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def between(lo: float, hi: float) -> Check:
    return lambda v: _is_num(v) and lo <= v <= hi


def at_least(lo: int) -> Check:
    return lambda v: _is_int(v) and v >= lo


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
    if _is_int(first):
        return all(_is_int(x) for x in v)
    return all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in v)


# Optional fields: (check, what the message says is expected). `None` always passes:
# clients send explicit nulls for "default".
_COMMON: dict[str, tuple[Check, str]] = {
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "temperature": (between(0, 2), "a number between 0 and 2"),
    "top_p": (between(0, 1), "a number between 0 and 1"),
    "n": (at_least(1), "an integer >= 1"),
    "max_tokens": (at_least(1), "an integer >= 1"),
    "seed": (_is_int, "an integer"),
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


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise bad_request(f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def check_fields(body: dict[str, Any], rules: dict[str, tuple[Check, str]]) -> None:
    for name, (check, expected) in rules.items():
        value = body.get(name)
        if value is not None and not check(value):
            raise bad_request(f"`{name}` must be {expected}", param=name)


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
        elif not isinstance(content, str | list):
            raise bad_request(f"`{param}.content` must be a string or a list of parts",
                              param=f"{param}.content")


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
