"""A mock OpenAI-compatible upstream written for raw speed, so it is never the bottleneck.

A bare asyncio `Protocol` on uvloop: no framework, no per-request JSON, every response
prebuilt as bytes at startup. It speaks just enough HTTP/1.1 for keep-alive clients
sending `Content-Length` bodies (wrk, aiohttp, httpx, uvicorn-based proxies).

- `POST …/completions` non-streamed: one fixed chat completion body.
- `"stream": true`: `chunks` SSE events `gap_ms` apart on an absolute schedule (so timer
  lateness does not accumulate), then a usage event if `include_usage` was asked, then
  `[DONE]`. Chunked transfer encoding keeps the connection reusable. The schedule is kept
  by a `Ticker` thread, not the event loop's timers: uvloop's (libuv's) timers have 1 ms
  resolution, which alone would put ±1 ms of jitter into every gap we mean to measure.
- `delay_ms` (optional) is waited before the response head / first event.
- `GET /health` and anything else GET: 200 `{}`.

Run: `python -m bench.mock_upstream --port 9100 [--chunks 64 --gap-ms 20 --delay-ms 0]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

MODEL = "bench-model"
_CONTENT = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"' + MODEL.encode() + b'","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}'
)
_CHUNK = (
    b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"' + MODEL.encode() + b'","choices":[{"index":0,"delta":{"content":"tok "},'
    b'"finish_reason":null}]}'
)
_LAST = _CHUNK.replace(b'"finish_reason":null', b'"finish_reason":"stop"')
_USAGE = (
    b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"' + MODEL.encode() + b'","choices":[],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":64,"total_tokens":76}}'
)


def _response(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _frame(event: bytes) -> bytes:
    """One SSE event as one HTTP chunk (chunked transfer encoding)."""
    payload = b"data: " + event + b"\n\n"
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


_OK = _response(b"200 OK", _CONTENT)
_HEALTH = _response(b"200 OK", b"{}")
_NOT_FOUND = _response(b"404 Not Found", b'{"error":{"message":"not found"}}')
_BAD = _response(b"400 Bad Request", b'{"error":{"message":"bad request"}}')
_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
# Two texts in turn: LiteLLM ends a stream whose chunks repeat one text 100 times
# ("The model is repeating the same chunk"), as 256 identical ones would.
_F_CHUNKS = (_frame(_CHUNK), _frame(_CHUNK.replace(b'"tok "', b'"tok, "')))
_F_LAST = _frame(_LAST)
_F_USAGE = _frame(_USAGE)
_F_DONE = _frame(b"[DONE]") + b"0\r\n\r\n"
_MAX_HEAD = 64 * 1024


class Settings:
    __slots__ = ("chunks", "delay", "gap")

    def __init__(self, chunks: int, gap_ms: float, delay_ms: float) -> None:
        self.chunks = max(1, chunks)
        self.gap = gap_ms / 1000
        self.delay = delay_ms / 1000


class Ticker:
    """Runs callbacks on the event loop at precise `time.perf_counter()` deadlines.

    A thread sleeps on a condition variable (futex with an hrtimer: tens of µs late, not
    a millisecond) and hands each due callback to the loop with `call_soon_threadsafe`,
    which wakes it at once. The loop thread is idle in epoll (GIL released) while the
    streams wait, so the handoff costs little.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)
        self._thread.start()

    def at(self, due: float, callback: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), callback))
            if self._heap[0][2] is callback:
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.perf_counter()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, callback = heapq.heappop(self._heap)
                self._loop.call_soon_threadsafe(callback)


class MockProtocol(asyncio.Protocol):
    """One connection. Requests are handled strictly one at a time (no pipelining needed)."""

    __slots__ = ("_buf", "_busy", "_s", "_sent", "_start", "_ticker", "_transport", "_usage")

    def __init__(self, settings: Settings, ticker: Ticker) -> None:
        self._s = settings
        self._ticker = ticker
        self._buf = bytearray()
        self._busy = False
        self._transport: asyncio.Transport | None = None
        self._sent = 0
        self._start = 0.0
        self._usage = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small SSE writes must leave at once, not wait for Nagle.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None  # pending ticks see this and do nothing

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._drain()

    def _drain(self) -> None:
        buf = self._buf
        while not self._busy and self._transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail()
                return
            head = bytes(buf[:end]).lower()
            length = 0
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r", at + 16)
                try:
                    length = int(head[at + 16:stop if stop > 0 else None])
                except ValueError:
                    self._fail()
                    return
            elif b"\ntransfer-encoding:" in head:
                self._fail()  # chunked request bodies: no client of this harness sends them
                return
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4:total])
            del buf[:total]
            self._handle(head, body)

    def _fail(self) -> None:
        if self._transport is not None:
            self._transport.write(_BAD)
            self._transport.close()

    def _handle(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if not head.startswith(b"post "):
            transport.write(_HEALTH)
            return
        if b"completions " not in head[:head.find(b"\r\n")]:
            transport.write(_NOT_FOUND)
            return
        if b'"stream":true' in body or b'"stream": true' in body:
            self._busy = True
            self._usage = b'"include_usage":true' in body or b'"include_usage": true' in body
            self._sent = 0
            self._start = time.perf_counter() + self._s.delay
            if self._s.delay:
                self._ticker.at(self._start, self._stream_head)
            else:
                self._stream_head()
        elif self._s.delay:
            self._busy = True
            self._ticker.at(time.perf_counter() + self._s.delay, self._complete)
        else:
            transport.write(_OK)

    def _complete(self) -> None:
        if self._transport is not None:
            self._transport.write(_OK)
        self._busy = False
        self._drain()

    def _stream_head(self) -> None:
        if self._transport is not None:
            self._transport.write(_STREAM_HEAD)
            self._next_chunk()

    def _next_chunk(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._sent += 1
        if self._sent < self._s.chunks:
            transport.write(_F_CHUNKS[self._sent & 1])
            # Absolute schedule: chunk i is due at start + i*gap, however late this one ran.
            self._ticker.at(self._start + self._sent * self._s.gap, self._next_chunk)
            return
        transport.write(_F_LAST + (_F_USAGE if self._usage else b"") + _F_DONE)
        self._busy = False
        self._drain()


async def serve(host: str, port: int, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(loop)
    server = await loop.create_server(lambda: MockProtocol(settings, ticker), host, port,
                                      backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream on http://{host}:{port} (chunks={settings.chunks}, "
          f"gap={settings.gap * 1000:g}ms, delay={settings.delay * 1000:g}ms)", flush=True)
    async with server:
        await stop.wait()
    ticker.stop()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.mock_upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=64, help="content events per stream")
    p.add_argument("--gap-ms", type=float, default=20.0, help="time between stream events")
    p.add_argument("--delay-ms", type=float, default=0.0, help="wait before responding")
    args = p.parse_args(argv)
    settings = Settings(args.chunks, args.gap_ms, args.delay_ms)
    run_fast(serve(args.host, args.port, settings))


def run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """asyncio.run on uvloop when it is installed (it is a Turnout dependency on Linux)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


if __name__ == "__main__":
    main()
