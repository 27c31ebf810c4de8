"""The Gemini-format mock server (per ai.google.dev/api: generateContent,
streamGenerateContent with alt=sse, batchEmbedContents, Google API errors), scripted like
every mock in `provider_mocks.py`. A turnout provider's base URL for it is root + "/v1beta".
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
from aiohttp import web

from tests.support.provider_mocks import (
    Reply,
    Text,
    _json,
    _Mock,
    _sse,
    _words,
)

GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


_GEMINI_PATH = re.compile(r"^/v1beta/models/([^/:]+):(\w+)$")


def google_error(status: int, message: str, retry_after: float | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": GOOGLE_STATUS.get(status, "UNKNOWN")}
    if retry_after is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                             "retryDelay": f"{retry_after:g}s"}]
    return {"error": error}


class GeminiMock(_Mock):
    """`models/{model}:generateContent`, `:streamGenerateContent` (alt=sse, else a JSON array)
    and `:batchEmbedContents` under /v1beta, as generativelanguage.googleapis.com answers.

    `require_signatures` behaves as Gemini 3 does: a model turn whose first function call
    carries no thoughtSignature is a 400."""

    def __init__(self, reply: Reply | None = None, *, api_key: str | None = None,
                 require_signatures: bool = False) -> None:
        super().__init__(reply, api_key=api_key)
        self.require_signatures = require_signatures

    async def respond(self, request: web.BaseRequest, body: Any) -> web.StreamResponse:
        match = _GEMINI_PATH.match(request.path)
        if request.method != "POST" or match is None:
            return _json(google_error(404, f"Not found: {request.path}"), 404)
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _json(google_error(403, "Method doesn't allow unregistered callers (callers"
                                      " without established identity). Please use API Key or"
                                      " other form of API consumer identity to call this API."),
                         403)
        if key != self.api_key:
            return _json(google_error(400, "API key not valid. Please pass a valid API key."), 400)
        model, method = match.groups()
        if method == "batchEmbedContents":
            return _json(self._embeddings(body))
        if method not in ("generateContent", "streamGenerateContent"):
            return _json(google_error(404, f"Method {method} not found"), 404)
        problem = self._check(body)
        if problem:
            return _json(google_error(400, problem), 400)
        return await self._generate(request, body, model, method == "streamGenerateContent")

    def _check(self, body: Any) -> str | None:
        contents = body.get("contents") if isinstance(body, dict) else None
        if not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        for i, content in enumerate(contents):
            if content.get("role") not in ("user", "model"):
                return f"Please use a valid role: user, model. (contents[{i}])"
            if not content.get("parts"):
                return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not" \
                       " be empty."
            calls = [p for p in content["parts"] if "functionCall" in p]
            if self.require_signatures and calls and "thoughtSignature" not in calls[0]:
                return ("Function call is missing a thought_signature in functionCall parts."
                        f" (contents[{i}])")
        return None

    async def _generate(self, request: web.BaseRequest, body: dict[str, Any], model: str,
                        stream: bool) -> web.StreamResponse:
        failure = self.take_failure()
        if failure is not None and not (failure.mid_stream and stream):
            headers = dict(failure.headers)
            if failure.retry_after is not None:
                headers["retry-after"] = f"{failure.retry_after:g}"
            return _json(google_error(failure.status, failure.message, failure.retry_after),
                         failure.status, headers)
        n = int((body.get("generationConfig") or {}).get("candidateCount") or 1)
        chunks = self._chunks(model, n)
        if failure is not None:
            error = google_error(failure.status, failure.message)
            chunks = [chunks[0], error]
        if not stream:
            return _json(self._whole(model, n))
        if request.query.get("alt") != "sse":
            return _json(chunks)
        # Gemini separates events with CRLF pairs, and never sends [DONE].
        return await _sse(request, [b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks],
                          {})

    def _usage(self, final: bool) -> dict[str, Any]:
        r = self.reply
        usage: dict[str, Any] = {"promptTokenCount": r.input_tokens,
                                 "promptTokensDetails": [{"modality": "TEXT",
                                                          "tokenCount": r.input_tokens}]}
        out = r.output_tokens if final else 0
        if final:
            usage["candidatesTokenCount"] = out
        if r.cached_tokens:
            usage["cachedContentTokenCount"] = r.cached_tokens
        if r.thoughts_tokens:
            usage["thoughtsTokenCount"] = r.thoughts_tokens
        usage["totalTokenCount"] = r.input_tokens + out + r.thoughts_tokens
        return usage

    def _parts(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(text parts, function-call parts) of the reply."""
        texts, calls = [], []
        for item in self.reply.content:
            if isinstance(item, Text):
                texts.append({"text": item.text})
            else:
                fn: dict[str, Any] = {"name": item.name, "args": item.arguments}
                if item.id:
                    fn["id"] = item.id
                part: dict[str, Any] = {"functionCall": fn}
                if item.signature:
                    part["thoughtSignature"] = item.signature
                calls.append(part)
        return texts, calls

    def _response(self, model: str, n: int, parts: list[dict[str, Any]], final: bool,
                  rid: str) -> dict[str, Any]:
        candidates = []
        for index in range(n):
            cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": index}
            if final:
                cand["finishReason"] = self.reply.stop or "STOP"
            candidates.append(cand)
        return {"candidates": candidates, "usageMetadata": self._usage(final),
                "modelVersion": self.reply.model or model, "responseId": rid}

    def _whole(self, model: str, n: int) -> dict[str, Any]:
        texts, calls = self._parts()
        return self._response(model, n, texts + calls, True, self.next_id("resp-"))

    def _chunks(self, model: str, n: int) -> list[dict[str, Any]]:
        """Text word by word, function calls whole in one chunk, the finishReason and the
        final usage on the last chunk (which carries the last words)."""
        rid = self.next_id("resp-")
        texts, calls = self._parts()
        words = [w for t in texts for w in _words(t["text"])]
        pieces: list[list[dict[str, Any]]] = [[{"text": w}] for w in words]
        if calls:
            pieces.append(calls)
        pieces = pieces or [[{"text": ""}]]
        return [self._response(model, n, p, i == len(pieces) - 1, rid)
                for i, p in enumerate(pieces)]

    def _embeddings(self, body: Any) -> dict[str, Any]:
        out = []
        for req in (body or {}).get("requests") or []:
            text = "".join(p.get("text", "") for p in req["content"]["parts"])
            digest = hashlib.sha256(text.encode()).digest()
            dims = int(req.get("outputDimensionality") or 8)
            out.append({"values": [round(digest[i % 32] / 255, 6) for i in range(dims)]})
        return {"embeddings": out}


# -- running -----------------------------------------------------------------------------------
