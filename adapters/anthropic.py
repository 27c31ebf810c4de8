"""Anthropic Messages API upstreams (`POST {base}/messages`, base e.g. https://api.anthropic.com/v1).

Chat requests are rewritten from the OpenAI shape (adapters/anthropic_request.py);
responses and stream events are rewritten into OpenAI completions and chunks (here).
Completions and embeddings do not exist in this API and are rejected.

Target options: `anthropic_version` (default 2023-06-01; from 2026-10-21 on, sampling
parameters are left out, as that version rejects them), `max_tokens_default` (sent when the
client set no limit; Anthropic requires one, default 4096).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.anthropic_request import (
    MESSAGES_API,
    THINKING_BLOCKS,
    api_version,
    messages_body,
    native_body,
)
from adapters.common import (
    ChunkWriter,
    choice,
    completion_body,
    context_or_rejected,
    load_object,
    reasoning_fields,
    rejected,
    retryable_kind,
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
