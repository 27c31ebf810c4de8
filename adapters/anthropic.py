"""Anthropic Messages API upstreams (`POST {base}/messages`, base e.g. https://api.anthropic.com/v1).

Chat requests are rewritten from the OpenAI shape: system/developer messages become the
top-level `system`, tool calls become `tool_use` blocks and tool messages `tool_result`
blocks in a user turn, images become image blocks. Responses and stream events are
rewritten into OpenAI completions and chunks. Completions and embeddings do not exist
in this API and are rejected.

Target options: `anthropic_version` (default 2023-06-01; from 2026-10-21 on, sampling
parameters are left out, as that version rejects them), `max_tokens_default` (sent when the
client set no limit; Anthropic requires one, default 4096).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.common import (
    ChunkWriter,
    append_turn,
    arguments_object,
    choice,
    completion_body,
    context_or_rejected,
    forced_tool_name,
    function_tools,
    image_url,
    json_schema_format,
    load_object,
    max_output_tokens,
    parse_data_url,
    reasoning_fields,
    rejected,
    retryable_kind,
    stop_list,
    text_of,
    tool_call,
)
from adapters.openai import error_message, retry_after_seconds
from gateway.canonical import (
    CanonicalRequest,
    Capabilities,
    FailureKind,
    Operation,
    StreamChunk,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    UpstreamResponse,
    Usage,
)

MESSAGES_API = "anthropic.messages"  # NativeRequest.api of a request from an Anthropic client
THINKING_BLOCKS = ("thinking", "redacted_thinking")

# 2023-06-01 is the version that still takes sampling parameters: 2026-10-21 answers a
# request with temperature, top_p or top_k with a 400 (platform.claude.com/docs/en/api/versioning).
API_VERSION = "2023-06-01"
_NO_SAMPLING_SINCE = "2026-10-21"
DEFAULT_MAX_TOKENS = 4096
_MAX_MESSAGE = 500
_CONTEXT_HINTS = ("prompt is too long", "context limit", "context window", "too many tokens")

# stop_reason → OpenAI finish_reason. pause_turn (a server tool paused a long turn) ends
# this response normally; model_context_window_exceeded is a length stop.
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Documented error types (platform.claude.com/docs/en/api/errors) → how to treat them, and
# the status they stand for when they arrive as an `event: error` inside a 200 stream.
ERROR_TYPES: dict[str, tuple[FailureKind, int]] = {
    "invalid_request_error": (FailureKind.REJECTED, 400),
    "authentication_error": (FailureKind.REJECTED, 401),
    "billing_error": (FailureKind.REJECTED, 402),
    "permission_error": (FailureKind.REJECTED, 403),
    "not_found_error": (FailureKind.REJECTED, 404),
    "request_too_large": (FailureKind.REJECTED, 413),
    "rate_limit_error": (FailureKind.RATE_LIMITED, 429),
    "api_error": (FailureKind.SERVER, 500),
    "timeout_error": (FailureKind.TIMEOUT, 504),
    "overloaded_error": (FailureKind.SERVER, 529),
}


# -- request -----------------------------------------------------------------------------------


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    url = image_url(part, where)
    data = parse_data_url(url)
    if data is not None:
        source = {"type": "base64", "media_type": data[0], "data": data[1]}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise rejected(f"{where}.image_url.url must be an http(s) or base64 data: URL")
    return {"type": "image", "source": source}


def _file_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    ref = part.get("file")
    data = parse_data_url(str(ref.get("file_data") or "")) if isinstance(ref, dict) else None
    if data is None or data[0] != "application/pdf":
        raise rejected(f"{where}: only inline PDF files (file_data as a data: URL) are supported")
    source = {"type": "base64", "media_type": data[0], "data": data[1]}
    return {"type": "document", "source": source}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    blocks = []
    for i, part in enumerate(content or []):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{i}]"
        if kind == "text":
            if part.get("text"):  # Anthropic rejects empty text blocks
                blocks.append(_text_block(str(part["text"])))
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        elif kind == "file":
            blocks.append(_file_block(part, at))
        else:
            raise rejected(f"{at}: content parts of type {kind!r} are not supported by Anthropic")
    return blocks


def _assistant_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = msg.get("content")
    if isinstance(content, list):  # text and refusal parts
        content = "".join(str(p.get("text") or p.get("refusal") or "") for p in content
                          if isinstance(p, dict))
    # Signed thinking blocks an earlier answer carried (`thinking_blocks`, as this adapter
    # returns them) go back first and unchanged: Claude checks their signatures.
    blocks = [b for b in msg.get("thinking_blocks") or ()
              if isinstance(b, dict) and b.get("type") in THINKING_BLOCKS]
    if isinstance(content, str) and content:
        blocks.append(_text_block(content))
    for i, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") or {}
        blocks.append({
            "type": "tool_use",
            "id": call.get("id"),
            "name": fn.get("name"),
            "input": arguments_object(fn.get("arguments"), f"{where}.tool_calls[{i}]"),
        })
    return blocks


def _tool_result(msg: dict[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.get("tool_call_id")}
    texts = text_of(msg.get("content"), where)
    if texts:
        block["content"] = texts[0] if len(texts) == 1 else [_text_block(t) for t in texts]
    return block


def _conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(system blocks, Anthropic messages). System/developer messages are lifted to the
    top-level `system` wherever they stand; consecutive same-role turns are merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role, where = msg.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_block(t) for t in text_of(msg.get("content"), where))
        elif role == "user":
            append_turn(turns, "user", "content", _user_blocks(msg.get("content"), where))
        elif role == "assistant":
            append_turn(turns, "assistant", "content", _assistant_blocks(msg, where))
        elif role == "tool":
            append_turn(turns, "user", "content", [_tool_result(msg, where)])
        else:
            raise rejected(f"{where}: role {role!r} is not supported by Anthropic")
    return system, turns


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choice_ = body.get("tool_choice")
    forced = forced_tool_name(choice_)
    if forced is not None:
        out: dict[str, Any] = {"type": "tool", "name": forced}
    elif choice_ in ("auto", "none"):
        out = {"type": choice_}
    elif choice_ == "required":
        out = {"type": "any"}
    elif body.get("parallel_tool_calls") is False:
        out = {"type": "auto"}
    else:
        return None
    if body.get("parallel_tool_calls") is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _copy_sampling(src: dict[str, Any], out: dict[str, Any]) -> None:
    temperature = src.get("temperature")
    if temperature is not None:
        # OpenAI's scale is 0-2, Anthropic's 0-1: clamp rather than fail a request that is
        # valid for the API the client speaks.
        out["temperature"] = min(float(temperature), 1.0)
    for name in ("top_p", "top_k"):
        if src.get(name) is not None:
            out[name] = src[name]


def _copy_options(src: dict[str, Any], out: dict[str, Any]) -> None:
    stops = stop_list(src.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    if src.get("tools"):
        out["tools"] = [{"name": fn["name"], "description": fn.get("description") or "",
                         "input_schema": fn.get("parameters") or {"type": "object"}}
                        for fn in function_tools(src["tools"])]
    tool_choice = _tool_choice(src)
    if tool_choice is not None:
        out["tool_choice"] = tool_choice
    schema = json_schema_format(src)
    if schema is not None:
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    user = src.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}


def messages_body(src: dict[str, Any], target: Target) -> dict[str, Any]:
    if isinstance(src.get("n"), int) and src["n"] > 1:
        raise rejected("`n` > 1 is not supported by Anthropic")
    system, turns = _conversation(src.get("messages") or [])
    limit = max_output_tokens(src)
    if limit is None:
        limit = int(target.options.get("max_tokens_default", DEFAULT_MAX_TOKENS))
    out: dict[str, Any] = {"model": target.upstream_model, "max_tokens": limit, "messages": turns}
    if system:
        out["system"] = system
    if api_version(target) < _NO_SAMPLING_SINCE:  # ISO dates compare as strings
        _copy_sampling(src, out)
    _copy_options(src, out)
    _thinking(src, out)
    return out


# OpenAI's reasoning_effort → an extended-thinking budget (at least Anthropic's minimum of
# 1024, below max_tokens as Anthropic requires).
_EFFORT_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}
_MIN_BUDGET = 1024


def _thinking(src: dict[str, Any], out: dict[str, Any]) -> None:
    thinking = src.get("thinking")  # an Anthropic client's own (a continuation's request)
    if not isinstance(thinking, dict):
        budget = _EFFORT_BUDGETS.get(str(src.get("reasoning_effort")))
        if budget is None or out["max_tokens"] <= _MIN_BUDGET:
            return
        thinking = {"type": "enabled", "budget_tokens": min(budget, out["max_tokens"] - 1)}
    forced = (out.get("tool_choice") or {}).get("type") in ("any", "tool")
    if thinking.get("type") != "disabled" and forced:
        return  # Anthropic refuses thinking with a forced tool: the tool call wins
    out["thinking"] = thinking
    if thinking.get("type") != "disabled":  # thinking takes no sampling changes
        for name in ("temperature", "top_p", "top_k"):
            out.pop(name, None)


def api_version(target: Target) -> str:
    return target.options.get("anthropic_version", API_VERSION)


def native_body(src: dict[str, Any], target: Target) -> dict[str, Any]:
    """A Messages request as its client sent it, for this deployment: its model, and no
    sampling parameters where the API version refuses them."""
    out = {**src, "model": target.upstream_model}
    out.pop("stream", None)  # set by build_request, as for a translated request
    if api_version(target) >= _NO_SAMPLING_SINCE:
        for name in ("temperature", "top_p", "top_k"):
            out.pop(name, None)
    return out


def count_tokens_request(req: CanonicalRequest, target: Target) -> UpstreamRequest:
    """POST {base}/messages/count_tokens for a Messages request: the client's own when it
    has one, else the translation of its canonical body (without `max_tokens`, which the
    endpoint does not take)."""
    native = req.native
    if native is not None and native.api == MESSAGES_API:
        body = native_body(native.body, target)
    else:
        body = messages_body(req.body, target)
    for name in ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences",
                 "metadata"):
        body.pop(name, None)
    headers = {"content-type": "application/json", "anthropic-version": api_version(target),
               **target.headers}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    return UpstreamRequest("POST", target.base_url + "/messages/count_tokens", headers,
                           orjson.dumps(body))


def count_tokens_result(body: bytes) -> int:
    count = load_object(body).get("input_tokens")
    if not isinstance(count, int) or isinstance(count, bool):
        raise UpstreamFailure(FailureKind.PROTOCOL, "count_tokens answered without input_tokens")
    return count


# -- response ----------------------------------------------------------------------------------


@dataclass(slots=True)
class AnthropicUsage:
    """Anthropic's token counts. Stream counts are cumulative, and a field a message_delta
    leaves out keeps its message_start value (as the SDK's accumulator does)."""

    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0

    def update(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                     "output_tokens"):
            value = obj.get(name)
            if isinstance(value, int):
                setattr(self, name, value)

    def canonical(self) -> Usage:
        # Anthropic reports cache reads and writes on top of input_tokens; the canonical
        # prompt_tokens includes both (OpenAI's convention), each also counted apart.
        prompt = self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
        return Usage(prompt, self.output_tokens, self.cache_read_input_tokens,
                     self.cache_creation_input_tokens)


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def failure_from_error(error: Any) -> UpstreamFailure:
    """An Anthropic error object (`{"type", "message"}`) that came without an HTTP error
    status (an `event: error` in a 200 stream): its type says what the status would be."""
    err = error if isinstance(error, dict) else {}
    message = str(err.get("message") or "no error message")[:_MAX_MESSAGE]
    kind, status = ERROR_TYPES.get(str(err.get("type")), (FailureKind.SERVER, 500))
    if kind is FailureKind.REJECTED:
        kind = context_or_rejected(message, _CONTEXT_HINTS)
    return UpstreamFailure(kind, message, status=status)


def _completion(obj: dict[str, Any]) -> tuple[bytes, Usage]:
    texts, calls, thinking = [], [], []
    for block in obj.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append(tool_call(str(block.get("id")), str(block.get("name")),
                                   orjson.dumps(block.get("input") or {}).decode()))
        elif kind in THINKING_BLOCKS:
            thinking.append(block)
        # server tool blocks have no OpenAI counterpart
    usage = AnthropicUsage()
    usage.update(obj.get("usage"))
    canonical = usage.canonical()
    only = choice(0, "".join(texts) if texts else None, calls,
                  finish_reason(obj.get("stop_reason")))
    if thinking:
        only["message"].update(reasoning_fields(thinking))
    body = completion_body(str(obj.get("id") or ""), str(obj.get("model") or ""), [only],
                           canonical)
    return body, canonical


class AnthropicStream:
    """Anthropic stream events → OpenAI chunks.

    The role chunk is held back until the first content, so an `event: error` between
    message_start and the first delta still fails the attempt before the client saw a byte.
    """

    __slots__ = ("_finish_sent", "_keep_usage", "_tools", "_usage", "_writer", "finished")

    def __init__(self, keep_usage_chunk: bool) -> None:
        self.finished = False
        self._keep_usage = keep_usage_chunk
        self._writer: ChunkWriter | None = None
        self._tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool_calls index
        self._usage = AnthropicUsage()
        self._finish_sent = False

    def feed(self, event: bytes | None, data: bytes) -> list[StreamChunk]:
        if event == b"ping":
            return []
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(FailureKind.PROTOCOL, "upstream sent an invalid event") from None
        handler = _HANDLERS.get(str(obj.get("type"))) if isinstance(obj, dict) else None
        # Unknown event types are skipped: Anthropic documents that new ones may appear.
        return handler(self, obj) if handler is not None else []

    @property
    def _out(self) -> ChunkWriter:
        if self._writer is None:
            raise UpstreamFailure(FailureKind.PROTOCOL, "stream event before message_start")
        return self._writer

    def _message_start(self, obj: dict[str, Any]) -> list[StreamChunk]:
        msg = obj.get("message") or {}
        self._writer = ChunkWriter(str(msg.get("id") or ""), str(msg.get("model") or ""),
                                   self._keep_usage)
        self._usage.update(msg.get("usage"))
        return []

    def _block_start(self, obj: dict[str, Any]) -> list[StreamChunk]:
        block = obj.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            index = self._tools[obj.get("index", -1)] = len(self._tools)
            call = tool_call(str(block.get("id")), str(block.get("name")), "", index)
            return self._out.delta({"tool_calls": [call]})
        if kind == "text" and block.get("text"):
            return self._out.delta({"content": block["text"]})
        if kind == "thinking" and block.get("thinking"):
            return self._out.delta({"reasoning_content": block["thinking"]})
        if kind == "redacted_thinking":  # whole at its start: no deltas follow
            return self._out.delta({"thinking_blocks": [block]})
        return []

    def _block_delta(self, obj: dict[str, Any]) -> list[StreamChunk]:
        delta = obj.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._out.delta({"content": delta["text"]})
        if kind == "thinking_delta" and delta.get("thinking"):
            return self._out.delta({"reasoning_content": delta["thinking"]})
        if kind == "signature_delta" and delta.get("signature"):
            # The signature ends a thinking block (it comes last): the client that sends
            # the block back needs it, unchanged.
            block = {"type": "thinking", "signature": delta["signature"]}
            return self._out.delta({"thinking_blocks": [block]})
        index = self._tools.get(obj.get("index", -1))
        if kind == "input_json_delta" and delta.get("partial_json") and index is not None:
            fragment = {"index": index, "function": {"arguments": delta["partial_json"]}}
            return self._out.delta({"tool_calls": [fragment]})
        # Citation deltas, and the input of server tools (which run at Anthropic, not at
        # the client), have no OpenAI counterpart.
        return []

    def _message_delta(self, obj: dict[str, Any]) -> list[StreamChunk]:
        self._usage.update(obj.get("usage"))
        stop = (obj.get("delta") or {}).get("stop_reason")
        if stop is None or self._finish_sent:
            return []
        self._finish_sent = True
        return self._out.delta({}, finish_reason=finish_reason(stop))

    def _message_stop(self, obj: dict[str, Any]) -> list[StreamChunk]:
        self.finished = True
        out = [] if self._finish_sent else self._out.delta({}, finish_reason="stop")
        out.append(self._out.usage(self._usage.canonical()))
        return out

    def _error(self, obj: dict[str, Any]) -> list[StreamChunk]:
        raise failure_from_error(obj.get("error"))


_HANDLERS: dict[str, Callable[[AnthropicStream, dict[str, Any]], list[StreamChunk]]] = {
    "message_start": AnthropicStream._message_start,
    "content_block_start": AnthropicStream._block_start,
    "content_block_delta": AnthropicStream._block_delta,
    "message_delta": AnthropicStream._message_delta,
    "message_stop": AnthropicStream._message_stop,
    "error": AnthropicStream._error,
}


class AnthropicAdapter:
    operations: frozenset[Operation] = frozenset({"chat"})
    # A trailing assistant message is a prefill that Claude continues; the API refuses one
    # that ends in whitespace. A Messages request from an Anthropic client is sent as the
    # client wrote it (cache_control, thinking and its signed blocks intact).
    _capabilities = Capabilities(continues_prefill=True, prefill_trims_whitespace=True,
                                 genai_provider="anthropic",
                                 native_apis=frozenset({MESSAGES_API}))

    def capabilities(self, target: Target) -> Capabilities:
        return self._capabilities

    def build_request(self, req: CanonicalRequest, target: Target) -> UpstreamRequest:
        if req.operation not in self.operations:
            raise rejected(f"Anthropic has no {req.operation} API; model {req.model!r} needs an"
                           " OpenAI-compatible deployment for it")
        native = req.native
        if native is not None and native.api == MESSAGES_API and native.stands_for(req):
            body = native_body(native.body, target)
        else:
            body = messages_body(req.body, target)
        headers = {
            "content-type": "application/json",
            "anthropic-version": api_version(target),
            **target.headers,
        }
        if target.api_key:
            headers["x-api-key"] = target.api_key
        if req.stream:
            body["stream"] = True
            headers["accept"] = "text/event-stream"
        return UpstreamRequest("POST", target.base_url + "/messages", headers, orjson.dumps(body))

    def parse_response(self, req: CanonicalRequest, body: bytes) -> UpstreamResponse:
        obj = load_object(body)
        if obj.get("type") == "error":
            raise failure_from_error(obj.get("error"))
        data, usage = _completion(obj)
        return UpstreamResponse(data, usage)

    def stream_translator(self, req: CanonicalRequest) -> AnthropicStream:
        return AnthropicStream(keep_usage_chunk=req.include_usage)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> UpstreamFailure:
        message, _ = error_message(body)
        # The HTTP status decides retryability, as it does for the SDKs; the error type
        # only matters for errors inside a 200 stream, which have no status of their own.
        kind = retryable_kind(status, headers) or context_or_rejected(message, _CONTEXT_HINTS)
        return UpstreamFailure(kind, message, status=status,
                               retry_after=retry_after_seconds(headers))
