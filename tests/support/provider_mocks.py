"""Mock provider servers: real HTTP on a loopback port, for adapter tests and for gateways
configured against them. The scripting and serving shared by every mock, and Anthropic's;
Gemini's is in `gemini_mock.py`.

Each mock reproduces its provider's documented wire format, independently of our adapters
and encoders (a shared bug would otherwise pass): Anthropic per platform.claude.com/docs
(Messages, streaming, errors), Gemini per ai.google.dev/api (generateContent,
streamGenerateContent with alt=sse, batchEmbedContents, Google API errors). Each records
every request, answers with a scripted `Reply`, and fails on request with scripted
`Failure`s (an error status, or a 200 stream that breaks with the provider's error event).

    mock = AnthropicMock(reply=Reply([Text("Hi!")]))
    with serving(mock) as root:          # a background thread, for sync code and SDKs
        Anthropic(base_url=root, api_key=mock.api_key)   # turnout: base_url root + "/v1"
    async with running(mock) as root:    # the test's own event loop
        ...

Gemini's base URL for a turnout provider is root + "/v1beta".
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiohttp
import orjson
from aiohttp import web

from adapters.base import Adapter
from gateway.canonical import (
    CanonicalRequest,
    FailureKind,
    StreamChunk,
    Target,
    UpstreamFailure,
    Usage,
)
from gateway.wire.sse import SSEParser
from selfhost.sim import Simulator, ThreadedSim, serve
from tests.support import anthropic_features as features
from tests.support.anthropic_features import PromptCache

# -- scripting ---------------------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""  # Anthropic: generated when empty; Gemini: sent only when set
    signature: str | None = None  # Gemini thoughtSignature


@dataclass
class Reply:
    """What the next successful request answers. `stop` is in the provider's own terms
    (Anthropic stop_reason / Gemini finishReason); None picks the natural one."""

    content: list[Text | ToolCall] = field(default_factory=lambda: [Text("Hello from the mock!")])
    stop: str | None = None
    input_tokens: int = 12
    output_tokens: int = 5
    cached_tokens: int = 0  # Anthropic cache_read_input_tokens / Gemini cachedContentTokenCount
    cache_creation_tokens: int = 0  # Anthropic only
    thoughts_tokens: int = 0  # Gemini only
    model: str | None = None  # else the requested model is echoed
    # Anthropic, when the request enables thinking: the thinking text (signed by the mock)
    # and, when set, a redacted_thinking block's data after it
    thinking: str = "Let me think about this step by step."
    redacted: str | None = None


@dataclass
class Failure:
    """Fail the next request: with `status` and the provider's error body, or, when
    `mid_stream` and the request streams, with a 200 that breaks after the first text."""

    status: int = 529
    message: str = "Overloaded"
    error_type: str | None = None  # Anthropic error type; default from the status
    retry_after: float | None = None  # `retry-after` header (Gemini: also RetryInfo)
    headers: dict[str, str] = field(default_factory=dict)
    mid_stream: bool = False


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text) or [""]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


class _Mock:
    """Request recording and failure scripting; subclasses speak the format."""

    api_key = "mock-key"

    def __init__(self, reply: Reply | None = None, *, api_key: str | None = None) -> None:
        self.reply = reply or Reply()
        self.api_key = api_key or self.api_key
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self._ids = itertools.count(1)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def fail(self, *failures: Failure) -> None:
        """Queue failures; each is used by one request, in order."""
        self.failures.extend(failures)

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):024d}"

    # The simulator's runner also opens and closes a simulator's KV-event publisher.
    async def open_kv(self, host: str) -> None:
        """A provider publishes no KV-cache events."""

    async def close_kv(self) -> None:
        """Nothing was opened."""

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(Recorded(request.method, request.path, dict(request.query),
                                      {k.lower(): v for k, v in request.headers.items()}, body))
        return await self.respond(request, body)

    async def respond(self, request: web.BaseRequest, body: Any) -> web.StreamResponse:
        raise NotImplementedError

    def take_failure(self) -> Failure | None:
        return self.failures.pop(0) if self.failures else None


async def _sse(request: web.BaseRequest, events: list[bytes],
               headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache", **headers})
    await resp.prepare(request)
    for event in events:
        await resp.write(event)
    await resp.write_eof()
    return resp


# -- Anthropic ---------------------------------------------------------------------------------

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}


class _AnthropicInvalid(Exception):
    pass


def _anthropic_check(body: Any, version: str, counting: bool = False) -> None:
    """The checks of the real API that catch translation bugs (messages as the API words them)."""
    if not isinstance(body, dict):
        raise _AnthropicInvalid("The request body is not valid JSON.")
    for name in ("model", "messages") if counting else ("model", "max_tokens", "messages"):
        if name not in body:
            raise _AnthropicInvalid(f"{name}: Field required")
    for name in ("temperature", "top_p", "top_k"):
        if version >= "2026-10-21" and name in body:
            raise _AnthropicInvalid(f"{name}: Extra inputs are not permitted in API version"
                                    f" {version}")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        raise _AnthropicInvalid("temperature: Input should be less than or equal to 1")
    previous_tool_ids: set[str] = set()
    for i, msg in enumerate(body["messages"]):
        if msg.get("role") not in ("user", "assistant"):
            raise _AnthropicInvalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = msg["content"] if isinstance(msg.get("content"), list) else []
        for k, block in enumerate(blocks):
            if block.get("type") == "text" and not block.get("text"):
                raise _AnthropicInvalid(f"messages.{i}.content.{k}.text: text content blocks"
                                        " must be non-empty")
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in \
                    previous_tool_ids:
                raise _AnthropicInvalid(
                    f"messages.{i}.content.{k}: unexpected `tool_use_id` found in `tool_result`"
                    f" blocks: {block.get('tool_use_id')}. Each `tool_result` block must have a"
                    " corresponding `tool_use` block in the previous message.")
        previous_tool_ids = {b.get("id") for b in blocks if b.get("type") == "tool_use"}


class AnthropicMock(_Mock):
    """`POST /v1/messages` and `/v1/messages/count_tokens` as api.anthropic.com answers
    them. With a `prompt_cache`, usage follows the request's cache_control breakpoints
    (anthropic_features.py); without one it is the reply's script."""

    def __init__(self, reply: Reply | None = None, *, api_key: str | None = None,
                 prompt_cache: PromptCache | None = None) -> None:
        super().__init__(reply, api_key=api_key)
        self.prompt_cache = prompt_cache

    def _headers(self, request_id: str) -> dict[str, str]:
        reset = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
        headers = {"request-id": request_id, "anthropic-organization-id": "mock-org"}
        for kind, limit in (("requests", 4000), ("input-tokens", 400000),
                            ("output-tokens", 80000), ("tokens", 480000)):
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(limit - 1)
            headers[f"anthropic-ratelimit-{kind}-reset"] = reset
        return headers

    def _error(self, status: int, message: str, request_id: str, error_type: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        error = {"type": error_type or ANTHROPIC_ERROR_TYPES.get(status, "api_error"),
                 "message": message}
        return _json({"type": "error", "error": error, "request_id": request_id}, status,
                     {**self._headers(request_id), **(headers or {})})

    async def respond(self, request: web.BaseRequest, body: Any) -> web.StreamResponse:
        rid = self.next_id("req_")
        counting = request.path == "/v1/messages/count_tokens"
        if request.method != "POST" or not (counting or request.path == "/v1/messages"):
            return self._error(404, f"Not found: {request.path}", rid)
        # SDKs before 2.0 send `x-api-key`; from 2.0 (API version 2026-10-21) a bearer token.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        key = request.headers.get("x-api-key") or bearer
        if not key:
            return self._error(401, "x-api-key header is required", rid)
        if key != self.api_key:
            return self._error(401, "invalid x-api-key", rid)
        version = request.headers.get("anthropic-version")
        if not version:
            return self._error(400, "anthropic-version: header is required", rid)
        try:
            _anthropic_check(body, version, counting)
            thinking = features.check_thinking(body) if not counting else False
            cached = self.prompt_cache.usage(body) if self.prompt_cache and not counting \
                else None
        except (_AnthropicInvalid, features.Invalid) as err:
            return self._error(400, str(err), rid)
        if counting:
            return _json({"input_tokens": features.count(body)}, headers=self._headers(rid))
        stream = body.get("stream") is True
        failure = self.take_failure()
        if failure is not None and not (failure.mid_stream and stream):
            extra = dict(failure.headers)
            if failure.retry_after is not None:
                extra["retry-after"] = f"{failure.retry_after:g}"
            return self._error(failure.status, failure.message, rid, failure.error_type, extra)
        message = self._message(body, thinking, cached)
        if not stream:
            return _json(message, headers=self._headers(rid))
        events = self._events(message)
        if failure is not None:  # break after the first text delta
            error = {"type": failure.error_type or ANTHROPIC_ERROR_TYPES.get(failure.status),
                     "message": failure.message}
            events = [*events[:4], _anthropic_event("error", {"error": error})]
        return await _sse(request, events, self._headers(rid))

    def _message(self, body: dict[str, Any], thinking: bool = False,
                 cached: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.reply
        content: list[dict[str, Any]] = []
        if thinking:  # billed as output
            content.append({"type": "thinking", "thinking": r.thinking,
                            "signature": features.signature(r.thinking)})
            if r.redacted is not None:
                content.append({"type": "redacted_thinking", "data": r.redacted})
        for item in r.content:
            if isinstance(item, Text):
                content.append({"type": "text", "text": item.text})
            else:
                content.append({"type": "tool_use", "id": item.id or self.next_id("toolu_"),
                                "name": item.name, "input": item.arguments})
        natural = "tool_use" if any(isinstance(c, ToolCall) for c in r.content) else "end_turn"
        return {
            "id": self.next_id("msg_"), "type": "message", "role": "assistant",
            "model": r.model or body["model"], "content": content,
            "stop_reason": r.stop or natural, "stop_sequence": None,
            "usage": {"input_tokens": r.input_tokens,
                      "cache_creation_input_tokens": r.cache_creation_tokens,
                      "cache_read_input_tokens": r.cached_tokens, **(cached or {}),
                      "output_tokens": r.output_tokens + (
                          features.tokens(r.thinking) if thinking else 0),
                      "service_tier": "standard"},
        }

    def _events(self, message: dict[str, Any]) -> list[bytes]:
        """The documented order: message_start, a ping, per block start/deltas/stop,
        message_delta (stop_reason, output_tokens), message_stop."""
        usage = dict(message["usage"], output_tokens=1)
        start = dict(message, content=[], stop_reason=None, usage=usage)
        events = [_anthropic_event("message_start", {"message": start})]
        for index, block in enumerate(message["content"]):
            events += _anthropic_block(index, block)
            if index == 0:
                events.insert(2, _anthropic_event("ping", {}))
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        events.append(_anthropic_event("message_delta", {
            "delta": delta, "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
        events.append(_anthropic_event("message_stop", {}))
        return events


def _anthropic_event(name: str, data: dict[str, Any]) -> bytes:
    payload = orjson.dumps({"type": name, **data})
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"


def _anthropic_block(index: int, block: dict[str, Any]) -> list[bytes]:
    if block["type"] == "text":
        first: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in _words(block["text"])]
    elif block["type"] == "thinking":  # the text in deltas, then its signature
        first = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": w} for w in _words(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif block["type"] == "redacted_thinking":  # whole in its start event
        first, deltas = block, []
    else:
        first = dict(block, input={})
        raw = orjson.dumps(block["input"]).decode()
        # The API opens with an empty partial_json, then streams the JSON in fragments.
        fragments = ["", *(raw[i:i + 7] for i in range(0, len(raw), 7))]
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
    events = [_anthropic_event("content_block_start", {"index": index, "content_block": first})]
    events += [_anthropic_event("content_block_delta", {"index": index, "delta": d})
               for d in deltas]
    events.append(_anthropic_event("content_block_stop", {"index": index}))
    return events


# -- Gemini ------------------------------------------------------------------------------------

@contextmanager
def serving(*mocks: _Mock) -> Iterator[str]:
    """Serve mocks from a background thread; yields the first one's server root URL."""
    # The simulator's runner needs `.handle`, `.open_kv` and `.close_kv`; the cast spares
    # it a Protocol of its own.
    with ThreadedSim(*(cast(Simulator, m) for m in mocks)) as threaded:
        yield threaded.url


@asynccontextmanager
async def running(mock: _Mock) -> AsyncIterator[str]:
    """Serve a mock on the running event loop; yields its server root URL."""
    server = await serve(cast(Simulator, mock))
    try:
        yield server.url
    finally:
        await server.close()


class Replay(_Mock):
    """Answers every request with the same bytes: e.g. our own encoder's output, served to
    an official SDK to prove that it parses."""

    def __init__(self, body: bytes, *, status: int = 200,
                 content_type: str = "text/event-stream; charset=utf-8") -> None:
        super().__init__()
        self.body, self.status, self.content_type = body, status, content_type

    async def respond(self, request: web.BaseRequest, body: Any) -> web.StreamResponse:
        return web.Response(body=self.body, status=self.status,
                            headers={"Content-Type": self.content_type})


# -- driving an adapter as dispatch does -------------------------------------------------------


@dataclass
class Exchange:
    """What one real HTTP attempt through an adapter produced."""

    status: int
    body: bytes = b""  # the canonical (OpenAI-shaped) body, non-streamed
    usage: Usage | None = None
    chunks: list[StreamChunk] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        """The chunks the client would see, parsed."""
        return [orjson.loads(c.data) for c in self.chunks if c.data]


async def attempt(adapter: Adapter, req: CanonicalRequest, target: Target) -> Exchange:
    """build_request → aiohttp → parse_response / classify_error / stream translation, with
    dispatch's stream rules: stop reading once the translator is finished, and an EOF
    before that is a cut-off. Failures raise UpstreamFailure, as in dispatch."""
    up = adapter.build_request(req, target)
    async with aiohttp.ClientSession() as session, session.request(
            up.method, up.url, data=up.body, headers=up.headers) as resp:
        if resp.status >= 300:
            raise adapter.classify_error(resp.status, resp.headers, await resp.read())
        if not req.stream:
            result = adapter.parse_response(req, await resp.read())
            return Exchange(resp.status, result.body, result.usage)
        out = Exchange(resp.status)
        translator, parser = adapter.stream_translator(req), SSEParser()
        while not translator.finished:
            line = await resp.content.readline()
            event = parser.feed_line(line) if line else parser.flush()
            if event is not None:
                out.chunks += translator.feed(event.event, event.data)
            if not line and not translator.finished:
                raise UpstreamFailure(FailureKind.PROTOCOL, "cut off before the end")
        out.usage = next((c.usage for c in reversed(out.chunks) if c.usage), None)
        return out
