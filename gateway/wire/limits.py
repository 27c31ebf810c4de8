"""The caps the wire layers hold their peers to, as plain values (no imports:
gateway/config/server.py takes its defaults from here, so each default is written once).

The client's header caps are aiohttp's defaults (the library it replaces); the rest bound
what one hostile or broken upstream or client can make a process hold or do.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What the upstream client accepts; past any of these: `upstream_protocol_error`."""

    max_headers: int = 128  # header lines in one response head (aiohttp: 128)
    max_header_bytes: int = 8190  # one header's name and value (aiohttp: 8,190)
    max_body_bytes: int = 64 * MIB  # a body read whole (decoded), non-streamed answers
    max_error_body_bytes: int = 64 * KIB  # a 3xx-5xx body: only its message is relayed
    max_sse_event_bytes: int = 4 * MIB  # one SSE event (its lines up to the blank one)
    max_decompression_ratio: float = 100.0  # decoded / encoded bytes, past the first MiB

    @property
    def max_head_bytes(self) -> int:
        """A whole head (status line and headers): what the two header caps allow."""
        return (self.max_headers + 1) * (self.max_header_bytes + 4)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What the server accepts from clients."""

    max_connections: int = 10_000  # open at once, per process; more: 503 and closed
    max_head_bytes: int = 64 * KIB  # request line and headers; more: 431
    header_timeout_s: float = 10.0  # from a request's first byte to its head's end; 408
    request_timeout_s: float = 60.0  # from a request's first byte to its body's end; 408
