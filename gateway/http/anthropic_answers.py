"""The Anthropic Messages surface's answers, pure (no I/O):

- `message_body`: an OpenAI chat.completion → an Anthropic Message;
- `StreamEncoder`: OpenAI chunks → Anthropic SSE events, in Anthropic's order;
- `error_body` / `error_event`: a GatewayError in Anthropic's error shape.

Answers carry thinking back (`reasoning_content` / `thinking_blocks` in the canonical
shape) as thinking blocks and deltas, signatures included.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from adapters.anthropic_request import THINKING_BLOCKS
from gateway.canonical import StreamChunk, Usage, usage_from_json
from gateway.errors import GatewayError
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
