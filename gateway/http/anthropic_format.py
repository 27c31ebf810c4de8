"""The Anthropic Messages surface: POST /v1/messages, streamed or not, so Anthropic SDK
users reach any deployment (an Anthropic model natively, an OpenAI-compatible or vLLM
model through translation) with routing, limits and metering as on the OpenAI surface.
Errors in Anthropic's shape."""

from __future__ import annotations

from gateway.canonical import CanonicalRequest, Operation, StreamChunk
from gateway.errors import GatewayError
from gateway.http import anthropic_answers as answers
from gateway.http import anthropic_schema as schema


class AnthropicStreamEncoder:
    def __init__(self, req: CanonicalRequest) -> None:
        self._rid = req.request_id
        self._enc = answers.StreamEncoder(req.model)

    def chunk(self, chunk: StreamChunk) -> bytes:
        return self._enc.feed(chunk)

    def end(self) -> bytes:
        return self._enc.end()

    def error(self, err: GatewayError) -> bytes:
        return answers.error_event(err, self._rid)


class AnthropicFormat:
    api_key_header: bytes | None = b"x-api-key"  # older SDKs; newer send a Bearer token

    def parse(self, op: Operation, raw: bytes, request_id: str) -> CanonicalRequest:
        return schema.canonical(raw, request_id)

    def error_body(self, err: GatewayError, request_id: str) -> bytes:
        return answers.error_body(err, request_id)

    def completion_body(self, req: CanonicalRequest, body: bytes) -> bytes:
        return answers.message_body(body, req.model)

    def stream_encoder(self, req: CanonicalRequest) -> AnthropicStreamEncoder:
        return AnthropicStreamEncoder(req)


ANTHROPIC = AnthropicFormat()
