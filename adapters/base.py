"""The interface every upstream dialect implements. Adapters are pure: no I/O, no policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.canonical import (
    CanonicalRequest,
    Capabilities,
    StreamChunk,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    UpstreamResponse,
)


class StreamTranslator(Protocol):
    """Turns one upstream SSE event at a time into canonical (OpenAI) chunks."""

    finished: bool  # the upstream signalled a clean end of stream

    def feed(self, event: bytes | None, data: bytes) -> list[StreamChunk]: ...


class Adapter(Protocol):
    def capabilities(self, target: Target) -> Capabilities:
        """What upstreams of this dialect can do (asked once per deployment)."""
        ...

    def build_request(self, req: CanonicalRequest, target: Target) -> UpstreamRequest: ...

    def parse_response(self, req: CanonicalRequest, body: bytes) -> UpstreamResponse:
        """A 2xx non-streamed body → canonical response; raises UpstreamFailure if unusable."""
        ...

    def stream_translator(self, req: CanonicalRequest) -> StreamTranslator: ...

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> UpstreamFailure: ...
