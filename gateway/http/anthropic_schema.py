"""The Anthropic Messages surface's translations, pure (no I/O):

- `canonical`: a Messages request body → a CanonicalRequest in the OpenAI chat shape,
  validated as Anthropic validates (`max_tokens` required, roles user/assistant, ...);
- `message_body`: an OpenAI chat.completion → an Anthropic Message;
- `StreamEncoder`: OpenAI chunks → Anthropic SSE events, in Anthropic's order;
- `error_body` / `error_event`: a GatewayError in Anthropic's error shape.

The canonical body holds what OpenAI's format can say; the request as the client sent it
travels beside it (`NativeRequest`), so an Anthropic deployment gets it whole:
`cache_control` (system, tools, messages, top level), `thinking` and the signed thinking
blocks of earlier turns. Other upstreams get the canonical body: no `cache_control`, and
`thinking` only where the upstream has an equivalent (README's fidelity table). Answers
carry thinking back (`reasoning_content` / `thinking_blocks` in the canonical shape) as
thinking blocks and deltas, signatures included. Server tools are rejected.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from adapters.anthropic import MESSAGES_API, THINKING_BLOCKS
from gateway.canonical import (
    CanonicalRequest,
    NativeRequest,
    StreamChunk,
    Usage,
    usage_from_json,
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
from gateway.wire.sse import encode

# OpenAI finish_reason → Anthropic stop_reason: the inverse of adapters.anthropic's mapping.
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "refusal",
}

# Documented status → error type (platform.claude.com/docs/en/api/errors). 503 is the
# gateway's "upstream rate limited / unavailable", which is what overloaded_error means.
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error",
    529: "overloaded_error",
}

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


# -- (2) response ------------------------------------------------------------------------------


def _stop(choice: dict[str, Any], tool_use: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). vLLM names the stop string that matched in the
    choice's `stop_reason`, which is exactly Anthropic's `stop_sequence`. An answer that
    holds a tool call stopped for it (`tool_use`, which agent loops check), whatever the
    upstream said (vLLM says `stop` for a forced call), unless it ran out of tokens."""
    finish = choice.get("finish_reason")
    if tool_use and finish != "length":
        return "tool_use", None
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str):
        return "stop_sequence", matched
    return STOP_REASONS.get(str(finish), "end_turn"), None


def _usage(usage: Usage | None) -> dict[str, int]:
    # Anthropic counts cache reads and writes apart from input_tokens; the canonical
    # prompt_tokens includes both.
    u = usage or Usage()
    return {"input_tokens": max(0, u.prompt_tokens - u.cached_tokens - u.cache_write_tokens),
            "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_read_input_tokens": u.cached_tokens, "output_tokens": u.completion_tokens}


def tool_input(arguments: Any) -> Any:
    """A tool call's arguments as the model wrote them: the JSON value they hold (an object
    unless the model got it wrong, which the client then sees as it is), or the text when
    it is not JSON at all. Never a silent `{}` in place of what the model said."""
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        return arguments
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments


def _reasoning(msg: dict[str, Any]) -> str:
    text = msg.get("reasoning_content") or msg.get("reasoning")  # (vLLM >= 0.10: reasoning)
    return text if isinstance(text, str) else ""


def thinking_blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The thinking of a canonical message as Anthropic blocks: those an Anthropic upstream
    sent (signed), else its reasoning text as one unsigned block."""
    text = _reasoning(msg)
    blocks = [dict(b) for b in msg.get("thinking_blocks") or ()
              if isinstance(b, dict) and b.get("type") in THINKING_BLOCKS]
    if not blocks:
        return [{"type": "thinking", "thinking": text, "signature": ""}] if text else []
    for block in blocks:  # a streamed answer, assembled, kept the signature, not the text
        if block["type"] == "thinking":
            if "thinking" not in block:
                block["thinking"], text = text, ""
            block.setdefault("signature", "")
    return blocks


def new_message_id(upstream_id: str | None = None) -> str:
    if upstream_id and upstream_id.startswith("msg_"):
        return upstream_id
    return "msg_" + (upstream_id or os.urandom(12).hex())


def message_body(completion: bytes, model: str | None = None) -> bytes:
    """An OpenAI chat.completion (as the pipeline returns it) → an Anthropic Message.
    `model` overrides the upstream's model name (e.g. with the public name)."""
    obj = orjson.loads(completion)
    choice = (obj.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content = thinking_blocks(msg)
    text = msg.get("content") or msg.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    calls = msg.get("tool_calls") or []
    for call in calls:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"),
                        "input": tool_input(fn.get("arguments"))})
    stop_reason, stop_sequence = _stop(choice, bool(calls))
    return orjson.dumps({
        "id": new_message_id(obj.get("id")), "type": "message", "role": "assistant",
        "content": content, "model": model or obj.get("model"),
        "stop_reason": stop_reason, "stop_sequence": stop_sequence,
        "usage": _usage(usage_from_json(obj.get("usage"))),
    })


# -- (3) stream --------------------------------------------------------------------------------


def _event(name: str, data: dict[str, Any]) -> bytes:
    return encode(orjson.dumps({"type": name, **data}), name.encode())


_JOINED = ("text", "thinking")  # block kinds whose consecutive deltas share one block


class StreamEncoder:
    """OpenAI chunks → Anthropic events: message_start, then per block content_block_start /
    content_block_delta... / content_block_stop (thinking, text and tool_use, one block open
    at a time), then message_delta (stop_reason, cumulative usage) and message_stop.

    Usage is only known at the end: message_start carries `input_tokens` as estimated by the
    caller (0 if unknown) and message_delta the real counts, which is where Anthropic's
    SDKs take the final usage from."""

    __slots__ = ("_block", "_id", "_input_tokens", "_model", "_next_index", "_started", "_stop",
                 "_tools", "_usage")

    def __init__(self, model: str, message_id: str | None = None, input_tokens: int = 0) -> None:
        self._model = model
        self._id = message_id or new_message_id()
        self._input_tokens = input_tokens
        self._started = False
        self._block: tuple[int, str] | None = None  # (index, kind) of the open block
        self._next_index = 0
        self._tools: dict[int, int] = {}  # OpenAI tool_calls index → block index
        self._stop: dict[str, Any] | None = None  # the choice that finished
        self._usage: Usage | None = None

    def feed(self, chunk: StreamChunk) -> bytes:
        """The events for one canonical chunk (often none: role and usage chunks)."""
        if chunk.usage is not None:
            self._usage = chunk.usage
        out = [self._start()]
        if chunk.data:
            obj = orjson.loads(chunk.data)
            if self._usage is None:
                self._usage = usage_from_json(obj.get("usage"))
            for choice in obj.get("choices") or []:
                if choice.get("index", 0) == 0:  # Anthropic has no `n`
                    out += self._choice(choice)
        return b"".join(out)

    def end(self) -> bytes:
        """After the last chunk: close the open block, then message_delta and message_stop."""
        stop_reason, stop_sequence = _stop(self._stop or {"finish_reason": "stop"},
                                           bool(self._tools))
        return b"".join([
            self._start(), self._close(),
            _event("message_delta", {"delta": {"stop_reason": stop_reason,
                                               "stop_sequence": stop_sequence},
                                     "usage": _usage(self._usage)}),
            _event("message_stop", {}),
        ])

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        usage = {"input_tokens": self._input_tokens, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0, "output_tokens": 0}
        return _event("message_start", {"message": {
            "id": self._id, "type": "message", "role": "assistant", "content": [],
            "model": self._model, "stop_reason": None, "stop_sequence": None, "usage": usage}})

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        delta = choice.get("delta") or {}
        out = []
        reasoning = _reasoning(delta)
        if reasoning:
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
        for block in delta.get("thinking_blocks") or ():
            out += self._thinking_block(block)
        text = delta.get("content") or delta.get("refusal")
        if text:
            out += self._open("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or []:
            out += self._tool(call)
        if choice.get("finish_reason"):
            self._stop = choice
            out.append(self._close())
        return out

    def _thinking_block(self, block: Any) -> list[bytes]:
        """A signed thinking block's signature (it ends the block), or a redacted block."""
        if not isinstance(block, dict):
            return []
        if block.get("type") == "redacted_thinking":
            out = self._open("redacted_thinking", block)
            return [*out, self._close()]
        if block.get("type") == "thinking" and block.get("signature"):
            out = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "signature_delta", "signature": block["signature"]}))
            return [*out, self._close()]
        return []

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        fn = call.get("function") or {}
        out = []
        index = call.get("index", 0)
        if index not in self._tools:  # the first delta of a call carries its id and name
            out += self._open("tool_use", {"type": "tool_use", "id": call.get("id"),
                                           "name": fn.get("name"), "input": {}})
            self._tools[index] = self._open_index()
        if fn.get("arguments"):  # relayed as they come: the SDK parses them whole
            partial = {"type": "input_json_delta", "partial_json": fn["arguments"]}
            out.append(self._delta(partial, self._tools[index]))
        return out

    def _open_index(self) -> int:
        assert self._block is not None
        return self._block[0]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        """Start a block unless one of this kind is open and takes more deltas (text and
        thinking do; each tool call and redacted block is a block of its own)."""
        if self._block is not None and self._block[1] == kind and kind in _JOINED:
            return []
        closed = self._close()
        index = self._next_index
        self._next_index += 1
        self._block = (index, kind)
        return [closed, _event("content_block_start", {"index": index, "content_block": block})]

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        at = index if index is not None else self._open_index()
        return _event("content_block_delta", {"index": at, "delta": delta})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        index, self._block = self._block[0], None
        return _event("content_block_stop", {"index": index})


# -- (4) errors --------------------------------------------------------------------------------


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(err: GatewayError, request_id: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": "error",
                            "error": {"type": error_type(err.status), "message": err.message}}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def error_event(err: GatewayError, request_id: str | None = None) -> bytes:
    """The `event: error` that ends a stream whose 200 was already sent."""
    return encode(error_body(err, request_id), b"error")
