"""OpenAI-compatible upstreams: OpenAI, vLLM, Together, Groq, and any host of the same API.

Bodies pass through as the client sent them, with the model renamed; responses and
stream chunks pass through byte for byte. Only chunks that carry usage are parsed,
so streaming costs one substring test per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import orjson

from adapters.base import StreamTranslator
from adapters.common import load_object
from adapters.openai_responses import (
    RESPONSES_API,
    ResponsesStream,
    completion,
    responses_request,
    serves_responses,
)
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
    usage_from_json,
)

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
_DONE = b"[DONE]"
_MAX_MESSAGE = 500
_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too many tokens")


def upstream_url(target: Target, op: Operation) -> str:
    """Azure OpenAI (option `api_version`) addresses a deployment, named by upstream_model:
    {base}/openai/deployments/{deployment}/chat/completions?api-version=..."""
    version = target.options.get("api_version")
    if not version:
        return target.base_url + _PATHS[op]
    deployment = quote(target.upstream_model, safe="")
    return (f"{target.base_url}/openai/deployments/{deployment}{_PATHS[op]}"
            f"?api-version={quote(version, safe='')}")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` first, then `Retry-After` as seconds or an HTTP date (as the SDK does)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_message(body: bytes) -> tuple[str, str | None]:
    """The upstream's own error message and code, from OpenAI's (or a similar) error shape."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:_MAX_MESSAGE] or "no error body"), None
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or orjson.dumps(err).decode()
        code = err.get("code")
        return str(message)[:_MAX_MESSAGE], (str(code) if code is not None else None)
    return str(err)[:_MAX_MESSAGE], None


def tokenize_request(req: CanonicalRequest, target: Target) -> UpstreamRequest:
    """vLLM's POST /tokenize (at the server root, beside /v1) for a chat request's prompt:
    its messages and tools through the model's own chat template."""
    root = target.base_url.removesuffix("/v1")
    body = {"model": target.upstream_model, "messages": req.body.get("messages") or [],
            "add_generation_prompt": True}
    if req.body.get("tools"):
        body["tools"] = req.body["tools"]
    headers = {"content-type": "application/json", **target.headers}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    return UpstreamRequest("POST", root + "/tokenize", headers, orjson.dumps(body))


def tokenize_result(body: bytes) -> int:
    count = load_object(body).get("count")
    if not isinstance(count, int) or isinstance(count, bool):
        raise UpstreamFailure(FailureKind.PROTOCOL, "/tokenize answered without a count")
    return count


class OpenAIStream:
    __slots__ = ("_keep_usage", "finished")

    def __init__(self, keep_usage_chunk: bool) -> None:
        self.finished = False
        self._keep_usage = keep_usage_chunk

    def feed(self, event: bytes | None, data: bytes) -> list[StreamChunk]:
        if data == _DONE:
            self.finished = True
            return []
        # Cheap pre-check: only chunks with a non-null usage object are worth parsing.
        if b'"usage"' not in data or b'"usage":null' in data or b'"usage": null' in data:
            return [StreamChunk(data)]
        obj = orjson.loads(data)
        usage = usage_from_json(obj.get("usage"))
        usage_only = not obj.get("choices")
        if usage_only and not self._keep_usage:
            # We asked for it for metering; the client did not, so it never sees it.
            return [StreamChunk(b"", usage=usage, usage_only=True)]
        return [StreamChunk(data, usage=usage, usage_only=usage_only)]


_OPENAI = Capabilities()
_OPENAI_RESPONSES = Capabilities(native_apis=frozenset({RESPONSES_API}))
_AZURE = Capabilities(genai_provider="azure.ai.openai")
# Fields of other client APIs that a canonical body may carry (for the response cache's
# key, or a translated continuation): no OpenAI-compatible upstream takes them.
_NOT_OPENAI = ("thinking",)


class OpenAIAdapter:
    def capabilities(self, target: Target) -> Capabilities:
        # vLLM continues a prefill too (continue_final_message), but that is a pool's
        # setting (`pools[].continuation`); an OpenAI-compatible host may not.
        if target.options.get("auth") == "api-key":
            return _AZURE
        return _OPENAI_RESPONSES if serves_responses(target) else _OPENAI

    def build_request(self, req: CanonicalRequest, target: Target) -> UpstreamRequest:
        native = req.native
        if native is not None:
            return self._translated(req, target)
        body = dict(req.body)
        body["model"] = target.upstream_model
        if req.stream:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True  # always meter streams from upstream-reported usage
            body["stream_options"] = opts
        headers = {"content-type": "application/json", **target.headers}
        if target.api_key:
            if target.options.get("auth") == "api-key":  # Azure's key header
                headers["api-key"] = target.api_key
            else:
                headers["authorization"] = f"Bearer {target.api_key}"
        if req.stream:
            headers["accept"] = "text/event-stream"
        return UpstreamRequest("POST", upstream_url(target, req.operation), headers,
                               orjson.dumps(body))

    def _translated(self, req: CanonicalRequest, target: Target) -> UpstreamRequest:
        """A request from another client API: its own body where this upstream serves that
        API (the Responses API), else the canonical body without other APIs' fields."""
        native = req.native
        if (native is not None and native.api == RESPONSES_API and native.stands_for(req)
                and serves_responses(target)):
            return responses_request(native.body, req.stream, target,
                                     self._headers(req, target))
        body = {k: v for k, v in req.body.items() if k not in _NOT_OPENAI}
        return self.build_request(replace(req, body=body, native=None), target)

    @staticmethod
    def _headers(req: CanonicalRequest, target: Target) -> dict[str, str]:
        headers = {"content-type": "application/json", **target.headers}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        if req.stream:
            headers["accept"] = "text/event-stream"
        return headers

    def parse_response(self, req: CanonicalRequest, body: bytes) -> UpstreamResponse:
        obj = load_object(body)
        if req.native is not None and obj.get("object") == "response":  # the Responses API
            data, usage = completion(obj)
            return UpstreamResponse(data, usage)
        return UpstreamResponse(body, usage_from_json(obj.get("usage")))

    def stream_translator(self, req: CanonicalRequest) -> StreamTranslator:
        if req.native is not None and req.native.api == RESPONSES_API:
            return Sniffing(req.include_usage)
        return OpenAIStream(keep_usage_chunk=req.include_usage)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> UpstreamFailure:
        message, code = error_message(body)
        retry_after = retry_after_seconds(headers)
        if status == 429:
            kind = FailureKind.RATE_LIMITED
        elif status >= 500 or status == 408:
            kind = FailureKind.SERVER
        elif code == "content_filter" or code == "content_policy_violation":
            kind = FailureKind.CONTENT_POLICY
        elif code == "context_length_exceeded" or any(h in message.lower() for h in _CONTEXT_HINTS):
            kind = FailureKind.CONTEXT_LENGTH
        else:
            kind = FailureKind.REJECTED
        return UpstreamFailure(kind, message, status=status, retry_after=retry_after)


class Sniffing:
    """The stream of a request that went to the Responses API or to chat completions,
    whichever the deployment serves: its first event says which (Responses events are
    named; chat chunks are not)."""

    __slots__ = ("_inner", "_keep_usage", "finished")

    def __init__(self, keep_usage_chunk: bool) -> None:
        self.finished = False
        self._keep_usage = keep_usage_chunk
        self._inner: OpenAIStream | ResponsesStream | None = None

    def feed(self, event: bytes | None, data: bytes) -> list[StreamChunk]:
        if self._inner is None:
            self._inner = (ResponsesStream(self._keep_usage) if event and event != b"message"
                           else OpenAIStream(self._keep_usage))
        chunks = self._inner.feed(event, data)
        self.finished = self._inner.finished
        return chunks
