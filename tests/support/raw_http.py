"""A raw HTTP server on loopback whose bytes each test chooses: the hostile or broken
upstream the HTTP client is held against (tests/unit/wire/test_http_client*.py), for our
client and for aiohttp alike."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable

from gateway.canonical import UpstreamRequest

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """A raw TCP server; `handler(reader, writer, n)` serves connection number `n`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()  # set when any connection's client side closed
        self.ended = asyncio.Event()  # set when any connection's handler has ended
        self._server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if tls else 'http'}://localhost:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.ended.set()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and content-length body), or None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"


def post(url: str, headers: dict[str, str] | None = None) -> UpstreamRequest:
    return UpstreamRequest("POST", url + "/v1/chat", headers or {"x-api-key": "k"}, b"{}")


async def serve_forever(server: Server, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, answer: bytes) -> None:
    while await server.read_request(reader) is not None:
        writer.write(answer)
        await writer.drain()




class ThreadedServer:
    """A `Server` on its own loop in a thread: a raw upstream for a gateway running in
    another process (tests/e2e)."""

    def __init__(self, handler: Handler) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = Server(handler)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def first_then_ok(first: bytes, *, every_connection: bool = True) -> Server:
    """Answers a connection's first request with `first` (the first connection's only,
    unless `every_connection`), then OK to every request after it."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        if every_connection or n == 1:
            await server.read_request(reader)
            writer.write(first)
            await writer.drain()
        await serve_forever(server, reader, writer, OK)

    server = Server(handler)
    return server
