"""Server-sent events: incremental parsing of an upstream byte stream, and encoding."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    data: bytes
    event: bytes | None = None


class SSEParser:
    """Feed lines (as read from the socket, with or without line endings); get events.

    Only `event:` and `data:` fields matter to LLM APIs; ids, retries and comments
    (`: ping`) are ignored as the SSE spec allows.
    """

    __slots__ = ("_data", "_event")

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._event: bytes | None = None

    def feed_line(self, line: bytes) -> SSEEvent | None:
        line = line.rstrip(b"\r\n")
        if not line:
            if not self._data:
                self._event = None
                return None
            ev = SSEEvent(b"\n".join(self._data), self._event)
            self._data = []
            self._event = None
            return ev
        if line.startswith(b"data:"):
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()
        return None

    def flush(self) -> SSEEvent | None:
        """An event left without its closing blank line when the stream ended."""
        return self.feed_line(b"")


def encode(data: bytes, event: bytes | None = None) -> bytes:
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event + b"\ndata: " + data + b"\n\n"
