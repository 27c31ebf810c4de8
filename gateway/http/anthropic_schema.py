"""The Anthropic Messages surface's request side, pure (no I/O): `canonical` turns a
Messages request body into a CanonicalRequest in the OpenAI chat shape, validated as
Anthropic validates (`max_tokens` required, roles user/assistant, ...). Answers and
errors in Anthropic's shape: anthropic_answers.py.

The canonical body holds what OpenAI's format can say; the request as the client sent it
travels beside it (`NativeRequest`), so an Anthropic deployment gets it whole:
`cache_control` (system, tools, messages, top level), `thinking` and the signed thinking
blocks of earlier turns. Other upstreams get the canonical body: no `cache_control`, and
`thinking` only where the upstream has an equivalent (README's fidelity table). Server
tools are rejected.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.anthropic_request import MESSAGES_API, THINKING_BLOCKS
from gateway.canonical import (
    CanonicalRequest,
    NativeRequest,
)
from gateway.errors import GatewayError, bad_request
from gateway.http.validation import (
    BOOLEAN,
    LIST,
    OBJECT,
    JsonSchema,
    Rule,
    Rules,
    at_least,
    between,
    check_fields,
    parse_json,
)

_CHOICES = ("auto", "any", "tool", "none")
_THINKING = ("enabled", "disabled", "adaptive")


def _thinking_ok(v: Any) -> bool:
    if not isinstance(v, dict) or v.get("type") not in _THINKING:
        return False
    budget = v.get("budget_tokens")
    return v["type"] != "enabled" or (isinstance(budget, int) and not isinstance(budget, bool)
                                      and budget >= 1)


FIELDS: Rules = {  # optional; the required ones are checked in `canonical`
    "stream": BOOLEAN,
    "temperature": between(0, 1),
    "top_p": between(0, 1),
    "top_k": at_least(0),
    "stop_sequences": Rule(lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
                           "a list of strings", {"type": "array", "items": {"type": "string"}}),
    "metadata": OBJECT,
    "tools": LIST,
    "tool_choice": Rule(lambda v: isinstance(v, dict) and v.get("type") in _CHOICES,
                        "an object with `type` auto, any, tool or none", {
                            "type": "object", "required": ["type"],
                            "properties": {"type": {"enum": list(_CHOICES)}}}),
    "thinking": Rule(_thinking_ok, "an object with `type` enabled (and `budget_tokens`),"
                     " disabled or adaptive", {
                         "type": "object", "required": ["type"], "properties": {
                             "type": {"enum": list(_THINKING)},
                             "budget_tokens": {"type": "integer", "minimum": 1}}}),
    "cache_control": OBJECT,  # automatic caching: the breakpoint goes on the last block
}
# What `canonical` requires, as JSON Schema (for the API document).
REQUIRED: JsonSchema = {
    "model": {"type": "string", "minLength": 1},
    "max_tokens": {"type": "integer", "minimum": 1},
    "messages": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["role", "content"], "properties": {
            "role": {"enum": ["user", "assistant"]},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
                "type": "object", "required": ["type"],
                "properties": {"type": {"type": "string"}}}}]}}}},
}


def _fail(param: str, message: str) -> GatewayError:
    return bad_request(f"{param}: {message}", param=param)


# -- (1) request -------------------------------------------------------------------------------


def _text(block: dict[str, Any], at: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _fail(f"{at}.text", "must be a string")
    return text


def _image_part(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _fail(f"{at}.source", "must be a base64 or url image source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise _fail(f"{at}.source", "only base64 document sources are supported")
    data = f"data:{source.get('media_type')};base64,{source.get('data')}"
    return {"type": "file", "file": {"file_data": data}}


def _tool_message(block: dict[str, Any], at: str) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str):
        raise _fail(f"{at}.tool_use_id", "is required")
    content = block.get("content")
    if isinstance(content, list):
        content = "".join(_text(b, f"{at}.content.{i}") for i, b in enumerate(content)
                          if isinstance(b, dict) and b.get("type") == "text")
    elif not isinstance(content, str):
        content = ""
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _user_message(content: Any, at: str) -> list[dict[str, Any]]:
    """One Anthropic user turn → OpenAI tool messages (its tool results, which OpenAI wants
    right after the assistant's calls) and then a user message with the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools, parts = [], []
    for i, block in enumerate(content):
        kind, where = block.get("type"), f"{at}.{i}"
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "image":
            parts.append(_image_part(block, where))
        elif kind == "document":
            parts.append(_document_part(block, where))
        elif kind == "tool_result":
            tools.append(_tool_message(block, where))
        else:
            raise _fail(f"{where}.type", f"{kind!r} blocks are not supported in user turns")
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_message(content: Any, at: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts, calls = [], []
    for i, block in enumerate(content):
        kind, where = block.get("type"), f"{at}.{i}"
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _fail(where, "tool_use blocks need an `id` and a `name`")
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": arguments}})
        elif kind not in THINKING_BLOCKS:  # (sent back whole in the native request)
            raise _fail(f"{where}.type", f"{kind!r} blocks are not supported in assistant turns")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", "is required and must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        at = f"messages.{i}"
        if not isinstance(msg, dict):
            raise _fail(at, "must be an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in ("user", "assistant"):
            raise _fail(f"{at}.role", "must be 'user' or 'assistant'")
        if not isinstance(content, str) and not (
                isinstance(content, list) and all(isinstance(b, dict) for b in content)):
            raise _fail(f"{at}.content", "must be a string or a list of content blocks")
        if role == "user":
            out += _user_message(content, f"{at}.content")
        else:
            out.append(_assistant_message(content, f"{at}.content"))
    return out


def _system(system: Any) -> dict[str, Any] | None:
    if system is None or system == "":
        return None
    if isinstance(system, str):
        return {"role": "system", "content": system}
    if isinstance(system, list):
        parts = [{"type": "text", "text": _text(b, f"system.{i}")} for i, b in enumerate(system)
                 if isinstance(b, dict) and b.get("type") == "text"]
        if len(parts) == len(system):
            return {"role": "system", "content": parts}
    raise _fail("system", "must be a string or a list of text blocks")


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        at = f"tools.{i}"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _fail(at, "must be an object with a `name`")
        if tool.get("type") not in (None, "custom"):  # web_search_2025..., bash_2025..., ...
            raise _fail(f"{at}.type", f"server tool {tool['type']!r} is not supported here")
        if not isinstance(tool.get("input_schema"), dict):
            raise _fail(f"{at}.input_schema", "is required and must be an object")
        fn = {"name": tool["name"], "parameters": tool["input_schema"]}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: dict[str, Any], body: dict[str, Any]) -> None:
    kind = choice["type"]
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _fail("tool_choice.name", "is required when type is 'tool'")
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use") is True:
        body["parallel_tool_calls"] = False


def _options(src: dict[str, Any], body: dict[str, Any]) -> None:
    for name in ("temperature", "top_p", "top_k"):
        if src.get(name) is not None:
            body[name] = src[name]
    if src.get("stop_sequences"):
        body["stop"] = src["stop_sequences"]
    if src.get("tools"):
        body["tools"] = _tools(src["tools"])
    if src.get("tool_choice") is not None:
        _tool_choice(src["tool_choice"], body)
    user = (src.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        body["user"] = user
    fmt = (src.get("output_config") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": fmt.get("schema")}}


def canonical(raw: bytes, request_id: str, *, counting: bool = False) -> CanonicalRequest:
    """Validate a Messages request and build its OpenAI-shaped canonical request
    (`counting`: a /v1/messages/count_tokens request, which has no `max_tokens`).

    The client always gets usage (Anthropic streams carry it), which the encoder takes
    from each StreamChunk's `usage`, so `include_usage` stays False."""
    src = parse_json(raw)
    model = src.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model", "is required and must be a non-empty string")
    limit = src.get("max_tokens")
    if counting:
        src.pop("max_tokens", None)
    elif not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise _fail("max_tokens", "is required and must be an integer >= 1")
    check_fields(src, FIELDS)
    system = _system(src.get("system"))
    messages = ([system] if system else []) + _messages(src.get("messages"))
    body: dict[str, Any] = {"model": model, "messages": messages}
    if not counting:
        body["max_tokens"] = limit
    stream = src.get("stream") is True
    if stream:
        body["stream"] = True
    _options(src, body)
    if src.get("thinking") is not None:
        # It changes the answer (the response cache keys on the canonical body) and a
        # continuation's translated request keeps it; OpenAI-compatible upstreams drop it.
        body["thinking"] = src["thinking"]
    return CanonicalRequest("chat", model, body, stream, False, request_id,
                            native=NativeRequest(MESSAGES_API, src, body))
