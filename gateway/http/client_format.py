"""What the pipeline needs of a client API format (OpenAI's, Anthropic's): parse a request
into the canonical shape, and render answers, streams and errors in the client's own
shape. One implementation per format (`openai_format.py`, `anthropic_format.py`), no I/O.
"""

from __future__ import annotations

from typing import Protocol

from gateway.canonical import CanonicalRequest, Operation, StreamChunk
from gateway.errors import GatewayError
from gateway.http.asgi import Headers, Send, send_response

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies in front not to buffer
]


class StreamEncoder(Protocol):
    def chunk(self, chunk: StreamChunk) -> bytes:
        """Bytes for the client for one canonical chunk (b"" when it shows nothing)."""
        ...

    def end(self) -> bytes: ...

    def error(self, err: GatewayError) -> bytes:
        """The in-stream error event that ends a stream whose 200 is already sent."""
        ...


class ClientFormat(Protocol):
    api_key_header: bytes | None  # a format's own key header besides Authorization

    def parse(self, op: Operation, raw: bytes, request_id: str) -> CanonicalRequest: ...

    def error_body(self, err: GatewayError, request_id: str) -> bytes: ...

    def completion_body(self, req: CanonicalRequest, body: bytes) -> bytes:
        """A canonical (OpenAI-shaped) non-streamed answer in the client's format."""
        ...

    def stream_encoder(self, req: CanonicalRequest) -> StreamEncoder: ...


async def send_error(send: Send, fmt: ClientFormat, err: GatewayError, rid: str,
                     extra: Headers | None = None) -> None:
    headers = [(b"x-request-id", rid.encode())]
    headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    headers += extra or []
    await send_response(send, err.status, fmt.error_body(err, rid), headers)
