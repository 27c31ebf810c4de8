"""One request's exchange with the simulator: its single outcome in the stats, its SSE
output (buffered between waits, cut once a fault's chunk budget is spent), and a client
connection killed on purpose (a reset or an orderly close)."""

from __future__ import annotations

import socket
import struct
from typing import Any

from aiohttp import web

from selfhost.sim_state import SimStats


class DropNow(Exception):
    """The disconnect_after_chunks budget is spent: the stream must die here."""


class Exchange:
    """One inference request: its body, its clock, and exactly one outcome in the stats."""

    __slots__ = ("_open", "_stats", "arrival", "body", "drop_after", "request")

    def __init__(
        self, request: web.BaseRequest, body: Any, arrival: float, stats: SimStats
    ) -> None:
        self.request, self.body, self.arrival = request, body, arrival
        self.drop_after: int | None = None
        self._stats, self._open = stats, True

    def finish(self, status: int) -> None:
        if self._open:
            self._open = False
            self._stats.finish(status)

    def end_early(self, *, aborted: bool) -> bool:
        """Record a cancel (or, with `aborted`, a drop); False if the outcome was already in."""
        if not self._open:
            return False
        self._open = False
        self._stats.end_early(aborted=aborted)
        return True


class SseOut:
    """Buffers SSE events between waits, so a delay-free stretch (all of it on the instant
    profile) is one socket write, and spends the disconnect_after_chunks budget."""

    __slots__ = ("_buf", "_left", "_request", "_resp")

    def __init__(
        self, request: web.BaseRequest, resp: web.StreamResponse, limit: int | None
    ) -> None:
        self._request, self._resp, self._left = request, resp, limit
        self._buf: list[bytes] = []

    def add(self, event: bytes) -> None:
        if self._left is not None:
            if self._left == 0:
                raise DropNow
            self._left -= 1
        self._buf.append(event)

    async def flush(self, *, headers: bool = False) -> None:
        if not self._resp.prepared and (self._buf or headers):
            await self._resp.prepare(self._request)  # headers leave at the first token
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            await self._resp.write(data)


def drop_connection(request: web.BaseRequest, *, reset: bool) -> None:
    """Kill the client's connection: an RST (SO_LINGER 0, then abort) or an orderly FIN."""
    transport = request.transport
    if transport is None:
        return
    if not reset:
        transport.close()  # flushes what was written first
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
