"""OpenAI-compatible upstreams: OpenAI, vLLM, Together, Groq, and any host of the same API.

Bodies pass through as the client sent them, with the model renamed; responses and
stream chunks pass through byte for byte. Only chunks that carry usage are parsed,
so streaming costs one substring test per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import orjson

from adapters.common import load_object
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
_AZURE = Capabilities(genai_provider="azure.ai.openai")


class OpenAIAdapter:
    def capabilities(self, target: Target) -> Capabilities:
        # vLLM continues a prefill too (continue_final_message), but that is a pool's
        # setting (`pools[].continuation`); an OpenAI-compatible host may not.
        return _AZURE if target.options.get("auth") == "api-key" else _OPENAI

    def build_request(self, req: CanonicalRequest, target: Target) -> UpstreamRequest:
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

    def parse_response(self, req: CanonicalRequest, body: bytes) -> UpstreamResponse:
        return UpstreamResponse(body, usage_from_json(load_object(body).get("usage")))

    def stream_translator(self, req: CanonicalRequest) -> OpenAIStream:
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
