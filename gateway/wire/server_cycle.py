"""One request and its response on our server (`server.py`): the ASGI `receive` and
`send` of one app call, and the response's framing on the wire."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from gateway.http.asgi import RequestBodyError

if TYPE_CHECKING:
    from gateway.wire.server import HttpProtocol

class Flow:
    """uvicorn's FlowControl (read and write pausing, a drain to wait on) without an
    asyncio.Event per connection: a future exists only while a writer waits for the
    buffer to drain. Idle and half-open connections cost that much less memory."""

    __slots__ = ("_drained", "_loop", "_transport", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self.read_paused = self.write_paused = False
        self._drained: asyncio.Future[None] | None = None

    async def drain(self) -> None:
        if self.write_paused:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await self._drained

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)


Message = dict[str, Any]
App = Callable[[Message, Any, Any], Awaitable[Any]]
log = logging.getLogger("uvicorn.error")

# Control characters, CR and LF included: a header holds none (no response splitting).
# Deleting them and comparing lengths is ~10x faster than a regex search.
_CTL = bytes((*range(32), 127)).replace(b"\t", b"")
# Headers the server owns (the framing, and the connection's keep-alive hint).
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection", b"keep-alive"))
# How a response body goes on the wire (RAW: HTTP/1.0 without a length, ended by close).
LENGTH, CHUNKED, RAW, NONE = 0, 1, 2, 3

# server_state.default_headers (date, server) is a new list once a second: encode it once.
_defaults: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")


def default_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    global _defaults
    if headers is not _defaults[0]:
        _defaults = (headers, b"".join([b"%b: %b\r\n" % (n, v) for n, v in headers]))
    return _defaults[1]


class Cycle:
    """One request and its response: the ASGI `receive` and `send` of one app call."""

    __slots__ = ("body", "complete", "disconnected", "end_sent", "error", "event",
                 "expect_100", "head", "head_only", "http10", "keep_alive", "left", "mode",
                 "more_body", "proto", "remaining", "scope", "started", "task")

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
        self.error: RequestBodyError | None = None  # the body cannot be had: receive raises

    def on_disconnect(self, callback: Callable[[], None] | None) -> None:
        """The `ON_DISCONNECT` extension: `callback` is called when the client goes away
        before the response is complete (None: not any more). Saves the app a task
        blocked on `receive()` to learn it."""
        self.left = callback

    def gone(self) -> None:
        """The client disconnected: unless it was answered, the app hears it."""
        if not self.complete and not self.disconnected:
            self.disconnected = True
            self.wake()
            if self.left is not None:
                self.left()

    def fail(self, error: RequestBodyError) -> None:
        """The body cannot be had: `receive()` raises `error`; the connection closes after
        the response."""
        self.error, self.keep_alive = error, False
        self.wake()

    async def run(self, app: App) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.disconnected and isinstance(exc, asyncio.CancelledError):
                return  # the app giving up on a client that left: nothing to report
            if exc is self.error and not self.started:  # the app let it through: plain
                await self._answer(*_plain(self.error.status, self.error.message.encode()))
                return
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
        await self._answer(*_ERROR_500)

    async def _answer(self, *messages: Message) -> None:
        if not self.disconnected and not self.complete:
            self.started, self.head = False, None
            for message in messages:
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
        while not (self.body or self.disconnected or self.complete or self.error
                   or (not self.more_body and not self.end_sent)):
            if self.proto.cycle is self:  # not while a later pipelined request waits
                self.proto.flow.resume_reading()
            if self.event is None:
                self.event = asyncio.Event()
            await self.event.wait()
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        if self.error is not None:
            raise self.error
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
        hint = self.proto.keep_alive_hint  # `keep-alive: timeout=N`, made once per server
        parts: list[bytes] = []
        for name, value in message.get("headers", ()):
            name = name.lower()
            if name in _FRAMING:
                if name == b"content-length":
                    length = int(value) if length < 0 else length
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"keep-alive":  # the app's own hint goes out instead of ours
                    hint = b""
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
        if not keep:
            if not closing:
                extra += b"connection: close\r\n"
        else:  # how long the connection is kept idle: a client's pool lets it go sooner
            if self.http10:  # HTTP/1.0 stays open only if the response says so
                extra += b"connection: keep-alive\r\n"
            extra += hint
        head = b"".join((STATUS_LINE[status], default_block(self.proto.state.default_headers),
                         block, extra, b"\r\n"))
        self.keep_alive, self.started, self.expect_100 = keep, True, False
        self.head = head  # goes out with the first body message: one write, not two


def _plain(status: int, body: bytes) -> tuple[Message, Message]:
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                         (b"content-length", b"%d" % len(body)), (b"connection", b"close")]},
            {"type": "http.response.body", "body": body})


_ERROR_500 = _plain(500, b"Internal Server Error")
