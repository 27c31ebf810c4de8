"""The OpenAI-compatible surface: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models. Errors in OpenAI's shape with OpenAI's status codes."""

from __future__ import annotations

import time

import orjson

from gateway.canonical import CanonicalRequest, Operation, StreamChunk
from gateway.errors import GatewayError
from gateway.http.asgi import Receive, Scope, Send, header, send_response
from gateway.http.openai_schema import canonical, error_body
from gateway.http.surface import request_id, send_error
from gateway.services import Services
from gateway.sse import encode

_DONE = b"data: [DONE]\n\n"


class OpenAIStreamEncoder:
    """Canonical chunks are OpenAI chunks already: frame them as SSE, end with [DONE]."""

    __slots__ = ()

    def chunk(self, chunk: StreamChunk) -> bytes:
        return encode(chunk.data) if chunk.data else b""

    def end(self) -> bytes:
        return _DONE

    def error(self, err: GatewayError) -> bytes:
        return encode(error_body(err))


_ENCODER = OpenAIStreamEncoder()


class OpenAIFormat:
    api_key_header: bytes | None = None

    def parse(self, op: Operation, raw: bytes, request_id: str) -> CanonicalRequest:
        return canonical(op, raw, request_id)

    def error_body(self, err: GatewayError, request_id: str) -> bytes:
        return error_body(err)

    def completion_body(self, req: CanonicalRequest, body: bytes) -> bytes:
        return body

    def stream_encoder(self, req: CanonicalRequest) -> OpenAIStreamEncoder:
        return _ENCODER


OPENAI = OpenAIFormat()


class ModelsEndpoint:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(header(scope, b"x-request-id"))
        pipeline = self.services.pipeline
        try:
            principal = await pipeline.authenticate(header(scope, b"authorization"))
        except GatewayError as err:
            await send_error(send, OPENAI, err, rid)
            return
        body = orjson.dumps({
            "object": "list",
            "data": [{"id": name, "object": "model", "created": self.created,
                      "owned_by": "turnout"} for name in pipeline.models(principal)],
        })
        await send_response(send, 200, body, [(b"x-request-id", rid.encode())])
