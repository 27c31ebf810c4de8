"""OpenAI-compatible upstreams that serve the Responses API themselves (OpenAI, vLLM): a
Responses request from a Responses client goes to `POST {base}/responses` as the client
wrote it (model renamed, its conversation already expanded by the gateway, `store: false`),
and the answer comes back into the canonical chat shape, which the Responses surface
renders again. Going through the canonical shape is what lets such an answer be cached,
failed over, continued and metered like any other; what it keeps is the README's fidelity
table (text, refusals, function calls, reasoning text, usage with cached, cache-write and
reasoning tokens, why it is incomplete).

Whether a deployment serves the API is its target's `responses_api` option: `native` or
`translate` (pools: `pools[].responses_api`, default native); unset, only OpenAI's own API
does.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.common import ChunkWriter, choice, completion_body
from gateway.canonical import (
    FailureKind,
    StreamChunk,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    Usage,
)

RESPONSES_API = "openai.responses"  # NativeRequest.api of a request from a Responses client
_OPENAI_HOST = "https://api.openai.com/"
_MAX_MESSAGE = 500

# Response.incomplete_details.reason → the chat finish_reason it stands for.
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def serves_responses(target: Target) -> bool:
    mode = target.options.get("responses_api")
    if mode:
        return mode == "native"
    return target.base_url.startswith(_OPENAI_HOST) and not target.options.get("api_version")


def responses_request(native: dict[str, Any], stream: bool, target: Target,
                      headers: dict[str, str]) -> UpstreamRequest:
    body = {**native, "model": target.upstream_model}
    if stream:
        body["stream"] = True
    else:
        body.pop("stream", None)
    return UpstreamRequest("POST", target.base_url + "/responses", headers, orjson.dumps(body))


def usage_of(obj: Any) -> Usage | None:
    """A Responses `usage` object as canonical Usage: the same convention as chat's
    (input_tokens includes cached tokens)."""
    if not isinstance(obj, dict):
        return None
    details = obj.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    out = obj.get("output_tokens_details")
    out = out if isinstance(out, dict) else {}
    return Usage(int(obj.get("input_tokens") or 0), int(obj.get("output_tokens") or 0),
                 int(details.get("cached_tokens") or 0),
                 int(details.get("cache_write_tokens") or 0),
                 int(out.get("reasoning_tokens") or 0))


def failure(error: Any) -> UpstreamFailure:
    """A failed response's (or an `error` event's) error: the upstream's fault, retryable
    like a 5xx unless it names the request as the cause."""
    err = error if isinstance(error, dict) else {}
    message = str(err.get("message") or "the upstream response failed")[:_MAX_MESSAGE]
    code = str(err.get("code") or "")
    kind = FailureKind.CONTENT_POLICY if "policy" in code else (
        FailureKind.REJECTED if code.startswith("invalid") else FailureKind.SERVER)
    return UpstreamFailure(kind, message, status=400 if kind is not FailureKind.SERVER else 502)


def _finish(obj: dict[str, Any], calls: bool) -> str:
    details = obj.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if obj.get("status") == "incomplete" or reason:
        return _INCOMPLETE.get(str(reason), "length")
    return "tool_calls" if calls else "stop"


def _texts(parts: Any, kind: str, field: str) -> str:
    return "".join(str(p.get(field) or "") for p in parts or ()
                   if isinstance(p, dict) and p.get("type") == kind)


def _tool_call(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(item.get("call_id") or item.get("id") or ""), "type": "function",
            "function": {"name": str(item.get("name") or ""),
                         "arguments": str(item.get("arguments") or "")}}


def completion(obj: dict[str, Any]) -> tuple[bytes, Usage | None]:
    """A Responses object → a canonical chat completion."""
    if obj.get("status") == "failed":
        raise failure(obj.get("error"))
    texts, refusals, reasoning, calls = [], [], [], []
    for item in obj.get("output") or ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            texts.append(_texts(item.get("content"), "output_text", "text"))
            refusals.append(_texts(item.get("content"), "refusal", "refusal"))
        elif kind == "reasoning":
            reasoning.append(_texts(item.get("content"), "reasoning_text", "text")
                             or _texts(item.get("summary"), "summary_text", "text"))
        elif kind == "function_call":
            calls.append(_tool_call(item))
        # built-in tool calls (web search, ...) have no chat counterpart
    usage = usage_of(obj.get("usage"))
    only = choice(0, "".join(texts) if any(texts) or not calls else None, calls,
                  _finish(obj, bool(calls)))
    if any(refusals):
        only["message"]["refusal"] = "".join(refusals)
    if any(reasoning):
        only["message"]["reasoning_content"] = "".join(reasoning)
    body = completion_body(str(obj.get("id") or ""), str(obj.get("model") or ""), [only],
                           usage)
    return body, usage


class ResponsesStream:
    """Responses stream events → canonical chunks: text, refusal and reasoning deltas,
    function calls (announced by their item, arguments by their deltas), and the finish
    and usage from the final response. Unknown events are skipped (new ones appear)."""

    __slots__ = ("_calls", "_keep_usage", "_writer", "finished")

    def __init__(self, keep_usage_chunk: bool) -> None:
        self.finished = False
        self._keep_usage = keep_usage_chunk
        self._writer: ChunkWriter | None = None
        self._calls: dict[Any, int] = {}  # output_index → tool_calls index

    def feed(self, event: bytes | None, data: bytes) -> list[StreamChunk]:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(FailureKind.PROTOCOL, "upstream sent an invalid event") from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind in ("response.created", "response.in_progress", "response.queued"):
            if self._writer is None:
                resp = obj.get("response") or {}
                self._writer = ChunkWriter(str(resp.get("id") or ""), str(resp.get("model") or ""),
                                           self._keep_usage)
            return []
        if kind == "error":
            raise failure(obj)
        if kind == "response.failed":
            raise failure((obj.get("response") or {}).get("error"))
        if kind in ("response.completed", "response.incomplete"):
            return self._end(obj.get("response") or {})
        delta = obj.get("delta")
        if kind == "response.output_text.delta" and delta:
            return self._out.delta({"content": delta})
        if kind == "response.refusal.delta" and delta:
            return self._out.delta({"refusal": delta})
        if kind in ("response.reasoning_text.delta",
                    "response.reasoning_summary_text.delta") and delta:
            return self._out.delta({"reasoning_content": delta})
        if kind == "response.output_item.added":
            item = obj.get("item") or {}
            if item.get("type") == "function_call":
                index = self._calls[obj.get("output_index")] = len(self._calls)
                call = {"index": index, **_tool_call(item)}
                return self._out.delta({"tool_calls": [call]})
        if kind == "response.function_call_arguments.delta" and delta:
            at = self._calls.get(obj.get("output_index"))
            if at is not None:
                fragment = {"index": at, "function": {"arguments": delta}}
                return self._out.delta({"tool_calls": [fragment]})
        return []

    @property
    def _out(self) -> ChunkWriter:
        if self._writer is None:
            raise UpstreamFailure(FailureKind.PROTOCOL, "stream event before response.created")
        return self._writer

    def _end(self, resp: dict[str, Any]) -> list[StreamChunk]:
        self.finished = True
        out = self._out.delta({}, finish_reason=_finish(resp, bool(self._calls)))
        usage = usage_of(resp.get("usage"))
        if usage is not None:
            out.append(self._out.usage(usage))
        return out
