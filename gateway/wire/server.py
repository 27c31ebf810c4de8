"""A lean HTTP/1.1 server protocol for uvicorn: `uvicorn.run(..., http=HttpProtocol)`.

Why our own: under load uvicorn's httptools protocol cost ~22 % of the gateway's CPU per
request. It checks each response header with two regexes, writes head and body separately,
arms a keep-alive timer per request and carries features we do not use. This one keeps
uvicorn's contract with its `Server` (constructor, `server_state.connections`, `.tasks`,
`.default_headers`, `shutdown()`), so uvicorn still runs the process: workers, signals,
lifespan, graceful shutdown. It checks the whole head in one C call, sends a non-streamed
response in one write and keeps one keep-alive timer per connection. Left out: websockets
(an upgrade is served as plain HTTP, as by uvicorn without a websocket library),
`limit_concurrency`, access logging, `reset_contextvars`. Proxy headers are middleware in
`config.loaded_app`, so they still work when asked for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from gateway.http.asgi import ON_DISCONNECT

Message = dict[str, Any]
App = Callable[[Message, Any, Any], Awaitable[Any]]
log = logging.getLogger("uvicorn.error")

# Control characters, CR and LF included: a header holds none (no response splitting).
# Deleting them and comparing lengths is ~10x faster than a regex search.
_CTL = bytes((*range(32), 127)).replace(b"\t", b"")
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_ERROR_500 = ({"type": "http.response.start", "status": 500,
               "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                           (b"content-length", b"21"), (b"connection", b"close")]},
              {"type": "http.response.body", "body": b"Internal Server Error"})
_BAD = b"Invalid HTTP request received."
# How a response body goes on the wire (RAW: HTTP/1.0 without a length, ended by close).
LENGTH, CHUNKED, RAW, NONE = 0, 1, 2, 3

# server_state.default_headers (date, server) is a new list once a second: encode it once.
_defaults: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")


def _default_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    global _defaults
    if headers is not _defaults[0]:
        _defaults = (headers, b"".join([b"%b: %b\r\n" % (n, v) for n, v in headers]))
    return _defaults[1]


class HttpProtocol(asyncio.Protocol):
    """One client connection: parses requests, runs each as a `Cycle`, in order."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self.app: App = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state
        self.app_state = app_state
        self.root_path: str = config.root_path
        self.asgi = {"version": config.asgi_version, "spec_version": "2.3"}
        self.keep_alive_s: float = config.timeout_keep_alive
        self.parser = httptools.HttpRequestParser(self)
        # Answer the first of pipelined requests even if a later one says "close".
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.cycle: Cycle = None  # type: ignore[assignment]  # the request being parsed
        self.active: Cycle | None = None  # the request being answered
        self.pipeline: deque[Cycle] = deque()  # parsed, waiting for `active` to finish
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        # The request being parsed; url is b"" between requests.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_100 = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.flow = FlowControl(transport)
        self.state.connections.add(self)  # type: ignore[arg-type]
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self._idle()  # a connection that never sends a request times out too

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        for cycle in (self.active, self.cycle, *self.pipeline):
            if cycle is not None and not cycle.complete:
                cycle.disconnected = True
                cycle.wake()
                if cycle.left is not None:
                    cycle.left()
        self.pipeline.clear()
        if self.timer is not None:
            self.timer.cancel()
        self.flow.resume_writing()  # senders waiting to drain wake up and see the disconnect

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # served as HTTP; the parser can't go on: close
            log.warning("Unsupported upgrade request.")
            if self.cycle is not None and not self.cycle.complete:
                self.cycle.keep_alive = False
            else:
                self.transport.close()
        except httptools.HttpParserError:
            log.warning("Invalid HTTP request received.")
            if self.active is None:  # else a response is under way: only hang up
                self.transport.write(b"".join((
                    STATUS_LINE[400], _default_block(self.state.default_headers),
                    b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n%b" % (len(_BAD), _BAD))))
            self.transport.close()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100 = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser, url, root = self.parser, self.url, self.root_path
        raw_path, _, query = url.partition(b"?")
        if raw_path[:1] != b"/" or b"#" in url:  # absolute form, fragment: the full parse
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        if root:
            path, raw_path = root + path, root.encode("ascii") + raw_path
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii")
        scope = {
            "type": "http", "asgi": self.asgi, "http_version": version, "method": method,
            "scheme": self.scheme, "path": path, "raw_path": raw_path, "query_string": query,
            "root_path": root, "headers": self.headers, "client": self.client,
            "server": self.server, "state": self.app_state.copy(),
        }
        cycle = self.cycle = Cycle(self, scope, parser.should_keep_alive(), self.expect_100,
                                   version == "1.0", method == "HEAD")
        scope["extensions"] = {ON_DISCONNECT: cycle.on_disconnect}
        self.url, self.headers, self.expect_100 = b"", [], False
        if self.active is None:
            self._run(cycle)
        else:  # pipelined: answered in order; stop reading until it is this one's turn
            self.pipeline.append(cycle)
            self.flow.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle.complete:  # answered already (e.g. refused as too large): drop the rest
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        if cycle.event is not None:
            cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if not cycle.complete:
            cycle.more_body = False
            if cycle.event is not None:
                cycle.wake()

    def shutdown(self) -> None:
        """uvicorn's graceful stop: close when idle, else after the last request in hand."""
        if self.active is None:
            self.transport.close()
        else:
            (self.pipeline[-1] if self.pipeline else self.active).keep_alive = False

    def _run(self, cycle: Cycle) -> None:
        self.active = cycle
        # uvicorn waits for these on shutdown; run() removes its own (no done callback).
        cycle.task = self.loop.create_task(cycle.run(self.app))
        self.state.tasks.add(cycle.task)

    def response_complete(self) -> None:
        self.state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:
            self._run(self.pipeline.popleft())
        else:
            self.active = None
            self._idle()
        if not self.pipeline:
            self.flow.resume_reading()

    def _idle(self) -> None:
        # One timer per connection, re-armed when it fires early: none per request.
        self.idle_since = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_later(self.keep_alive_s, self._idle_check)

    def _idle_check(self) -> None:
        self.timer = None
        if self.active is not None or self.url or self.transport.is_closing():
            return  # busy: the next _idle() re-arms
        left = self.idle_since + self.keep_alive_s - self.loop.time()
        if left > 0:
            self.timer = self.loop.call_later(left, self._idle_check)
        else:
            self.transport.close()


class Cycle:
    """One request and its response: the ASGI `receive` and `send` of one app call."""

    __slots__ = ("body", "complete", "disconnected", "end_sent", "event", "expect_100",
                 "head", "head_only", "http10", "keep_alive", "left", "mode", "more_body",
                 "proto", "remaining", "scope", "started", "task")

    def __init__(self, proto: HttpProtocol, scope: Message, keep_alive: bool,
                 expect_100: bool, http10: bool, head_only: bool) -> None:
        self.proto, self.scope, self.keep_alive = proto, scope, keep_alive
        self.expect_100, self.http10, self.head_only = expect_100, http10, head_only
        self.body = b""
        self.more_body = True
        self.end_sent = False  # the last http.request message went to the app
        self.event: asyncio.Event | None = None  # made only when receive() has to wait
        self.disconnected = self.started = self.complete = False
        self.mode, self.remaining = LENGTH, 0
        self.head: bytes | None = None  # held back to go out with the body in one write
        self.task: asyncio.Task[None] | None = None
        self.left: Callable[[], None] | None = None  # called if the client disconnects

    def on_disconnect(self, callback: Callable[[], None] | None) -> None:
        """The `ON_DISCONNECT` extension: `callback` is called when the client goes away
        before the response is complete (None: not any more). Saves the app a task
        blocked on `receive()` to learn it."""
        self.left = callback

    async def run(self, app: App) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.disconnected and isinstance(exc, asyncio.CancelledError):
                return  # the app giving up on a client that left: nothing to report
            log.error("Exception in ASGI application\n", exc_info=exc)
            if not self.started or self.head is not None:  # nothing written yet
                await self._error_500()
            elif not self.complete:
                self.proto.transport.close()
        else:
            if self.disconnected or self.complete:
                return
            if not self.started:
                log.error("ASGI callable returned without starting response.")
                await self._error_500()
            else:
                log.error("ASGI callable returned without completing response.")
                self.proto.transport.close()
        finally:
            self.proto.state.tasks.discard(self.task)

    async def _error_500(self) -> None:
        if not self.disconnected and not self.complete:
            self.started, self.head = False, None
            for message in _ERROR_500:
                await self.send(message)

    def wake(self) -> None:
        event, self.event = self.event, None
        if event is not None:
            event.set()

    async def receive(self) -> Message:
        if self.expect_100:
            self.expect_100 = False
            if not self.proto.transport.is_closing():
                self.proto.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Wait for body; once it is all read, for the client to leave or the response to end.
        while not (self.body or self.disconnected or self.complete
                   or (not self.more_body and not self.end_sent)):
            if self.proto.cycle is self:  # not while a later pipelined request waits
                self.proto.flow.resume_reading()
            if self.event is None:
                self.event = asyncio.Event()
            await self.event.wait()
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        body, self.body = self.body, b""
        self.end_sent = not self.more_body
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        proto = self.proto
        if proto.flow.write_paused and not self.disconnected:
            await proto.flow.drain()
        if self.disconnected:
            return
        if not self.started:
            if message["type"] != "http.response.start":
                raise RuntimeError("Expected ASGI message 'http.response.start', "
                                   f"but got '{message['type']}'.")
            self._start(message)
            return
        if self.complete or message["type"] != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent.")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.mode == LENGTH:
            self.remaining -= len(body)
            if self.remaining < 0:
                raise RuntimeError("Response content longer than Content-Length")
            if self.head is not None:
                body, self.head = self.head + body, None
            if body:
                proto.transport.write(body)
        else:  # each message goes out at once (never hold back SSE), the head with the first
            if self.mode == CHUNKED:
                out = (b"%x\r\n%b\r\n%b" % (len(body), body, b"" if more else b"0\r\n\r\n")
                       if body else b"" if more else b"0\r\n\r\n")
            else:  # RAW, or NONE (no body: the head alone)
                out = body if self.mode == RAW else b""
            if self.head is not None:
                out, self.head = self.head + out, None
            if out:
                proto.transport.write(out)
        if not more:
            if self.remaining:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            self.wake()
            if not self.keep_alive:
                proto.transport.close()
            proto.response_complete()

    def _start(self, message: Message) -> None:
        status = message["status"]
        keep, length, chunked, closing = self.keep_alive, -1, False, False
        parts: list[bytes] = []
        for name, value in message.get("headers", ()):
            name = name.lower()
            if name in _FRAMING:
                if name == b"content-length":
                    length = int(value) if length < 0 else length
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif b"close" in [t.strip() for t in value.lower().split(b",")]:
                    keep, closing = False, True
            parts += (name, b": ", value, b"\r\n")
        block = b"".join(parts)
        if len(block.translate(None, _CTL)) != len(block) - (len(parts) >> 1):  # CRLF a line
            raise RuntimeError("Invalid HTTP header name or value.")
        extra = b""
        if self.head_only or status in (204, 304) or status < 200:
            self.mode = NONE
        elif chunked:
            self.mode = CHUNKED
        elif length >= 0:
            self.mode, self.remaining = LENGTH, length
        elif self.http10:  # no chunked encoding in HTTP/1.0: the close ends the body
            self.mode, keep = RAW, False
        else:
            self.mode, extra = CHUNKED, b"transfer-encoding: chunked\r\n"
        if not keep and not closing:
            extra += b"connection: close\r\n"
        elif keep and self.http10:  # HTTP/1.0 stays open only if the response says so
            extra += b"connection: keep-alive\r\n"
        head = b"".join((STATUS_LINE[status], _default_block(self.proto.state.default_headers),
                         block, extra, b"\r\n"))
        self.keep_alive, self.started, self.expect_100 = keep, True, False
        self.head = head  # goes out with the first body message: one write, not two
