"""One HTTP/1.1 connection to an upstream and the response it is reading.

An asyncio protocol fed straight into llhttp (httptools): no stream reader, no per-request
timer or task, no header object zoo. This is what `gateway/upstream.py` pools. The body
arrives into one buffer that `read()` (whole) or `readline()` (SSE) drain; a connection
goes back to its pool only once its response was read to the end, and is dropped at the
first sign that it is out of step (bytes nobody asked for, a body that ended badly).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any, cast

import httptools

from gateway.canonical import FailureKind, UpstreamFailure

CUT_OFF = "the upstream ended the response before it finished"
_PAUSE_AT = 256 * 1024  # buffered and unread by readline(): stop reading the socket


def expire(waiter: asyncio.Future[Any]) -> None:
    """A deadline passed: the waiter raises TimeoutError (as `asyncio.timeout` would)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _failure(message: str) -> UpstreamFailure:
    return UpstreamFailure(FailureKind.PROTOCOL, message)


class _Decoder:
    """Content-Encoding gzip or deflate (zlib-wrapped, or raw as some servers send it)."""

    __slots__ = ("_z",)

    def __init__(self, coding: str) -> None:
        # 47: a gzip or a zlib header, whichever it is; deflate decides on its first byte.
        self._z: Any = zlib.decompressobj(47) if coding != "deflate" else None

    def decode(self, data: bytes) -> bytes:
        if self._z is None and data:  # deflate: a zlib header says 8 in its low nibble
            self._z = zlib.decompressobj(15 if data[0] & 0x0F == 8 else -15)
        return cast(bytes, self._z.decompress(data)) if self._z is not None else b""

    def finish(self, fed: bool) -> bytes:
        if self._z is None or not fed:  # an empty body (a 204, a HEAD) is not truncated
            return b""
        out = cast(bytes, self._z.flush())
        if not self._z.eof:
            raise zlib.error("truncated")
        return out


def decoder_for(coding: str | None) -> _Decoder | None:
    """None for no coding; raises UpstreamFailure for one we did not offer."""
    if not coding:
        return None
    coding = coding.strip().lower()
    if coding == "identity":
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return _Decoder(coding)
    raise _failure(f"the upstream sent an unsupported content-encoding ({coding[:40]})")


class Response:
    """Status and headers at once; the body as it arrives. `release()` or `close()` must
    end it: release keeps the connection for reuse when the body was read to the end."""

    __slots__ = ("_buf", "_conn", "_decoder", "_done", "_error", "_fed", "_released",
                 "_waiter", "_whole", "headers", "status")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}  # names lower-cased; repeats joined with ", "
        self._buf = bytearray()
        self._decoder: _Decoder | None = None
        self._done = False
        self._error: UpstreamFailure | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._whole = False  # read() wants it all: no back-pressure
        self._fed = False  # any body bytes arrived

    async def read(self, deadline: float | None = None) -> bytes:
        """The whole (rest of the) body; TimeoutError if it is not in by `deadline`
        (the loop's clock)."""
        self._whole = True
        while not self._done:
            await self._wait(deadline)
        if self._error is not None:
            raise self._error
        body = bytes(self._buf)
        self._buf.clear()
        return body

    async def readline(self, deadline: float | None = None) -> bytes:
        """The next line with its b"\\n"; the unterminated rest at the end; b"" after.
        TimeoutError if none is complete by `deadline`."""
        while True:
            if self._error is not None:
                raise self._error
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end + 1])
                del self._buf[:end + 1]
                return line
            if self._done:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            await self._wait(deadline)

    async def _wait(self, deadline: float | None) -> None:
        self._conn.resume()
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        # A timer only while waiting: most reads find their data already buffered.
        timer = loop.call_at(deadline, expire, waiter) if deadline is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def release(self) -> None:
        """Done with it: the connection is kept if the body was read whole, else dropped."""
        if not self._released:
            self._released = True
            self._conn.finished(reusable=self._done and self._error is None)

    def close(self) -> None:
        """Drop the connection: an upstream still generating sees the request end."""
        if not self._released:
            self._released = True
            self._conn.finished(reusable=False)

    # Fed by the connection.
    def _feed(self, data: bytes) -> None:
        self._fed = True
        if self._decoder is not None:
            try:
                data = self._decoder.decode(data)
            except zlib.error:
                self._conn.broken("the upstream sent a corrupt compressed body")
                return
        self._buf += data
        self._wake()
        if not self._whole and len(self._buf) > _PAUSE_AT:
            self._conn.pause()

    def _finish(self) -> None:
        if self._decoder is not None:
            try:
                self._buf += self._decoder.finish(self._fed)
            except zlib.error:
                self._fail(_failure("the upstream sent a truncated compressed body"))
                return
        self._done = True
        self._wake()

    def _fail(self, error: UpstreamFailure) -> None:
        if not self._done:
            self._error = error
            self._done = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time. `on_idle(self)` hands it back to
    its pool, `on_gone(self)` tells the pool it closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_idle: Callable[[Connection], None],
                 on_gone: Callable[[Connection], None]) -> None:
        self.loop = loop
        self._on_idle = on_idle
        self._on_gone = on_gone
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._head: asyncio.Future[Response] | None = None
        self._resp: Response | None = None  # the response being received, until complete
        self._reading: Response | None = None  # the response handed out, until released
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._framed = False  # content-length or chunked: the body's end is known
        self._keep_alive = False  # the response allows another request on the connection
        self._interim = False  # a 1xx head: skipped, the real one follows
        self._paused = False
        self.closed = False
        self.idle_since = 0.0

    # Used by the pool and the client.
    def request(self, data: bytes) -> asyncio.Future[Response]:
        assert self._transport is not None
        self._resp = self._reading = Response(self)
        self._keep_alive = False
        head = self._head = self.loop.create_future()
        self._transport.write(data)
        return head

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True

    def pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def finished(self, *, reusable: bool) -> None:
        self._reading = None
        if reusable and self._keep_alive and not self.closed and self._resp is None:
            self.resume()
            self._on_idle(self)
        else:
            self.close()

    def broken(self, message: str) -> None:
        """Out of step with the server: fail what is waiting, never reuse the connection."""
        failure = _failure(message)
        if self._head is not None and not self._head.done():
            self._head.set_exception(failure)
        if self._reading is not None:
            self._reading._fail(failure)
        self.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._resp is None:  # nothing asked for: a connection out of step
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            self.broken(f"bad HTTP response from the upstream ({type(err).__name__})")

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_gone(self)
        if self._head is not None and not self._head.done():
            # Never resent: the server may have acted on it (`_IDLE_S` in
            # gateway/upstream.py keeps us from reusing connections servers drop).
            self._head.set_exception(UpstreamFailure(
                FailureKind.SERVER, "connection closed before a response"))
        elif self._resp is not None:
            if self._framed or exc is not None:
                self._resp._fail(_failure(CUT_OFF))
            else:
                self._resp._finish()  # a body delimited by the connection's end

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._resp is None:  # a second answer to one request: out of step
            self.close()
        self._raw_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        resp, head, parser = self._resp, self._head, self._parser
        if resp is None or head is None or head.done():
            return
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: the answer comes next
            return
        resp.status = status
        self._keep_alive = parser.should_keep_alive()  # only valid until the body ends
        headers = resp.headers
        for raw_name, raw_value in self._raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._framed = "content-length" in headers or "transfer-encoding" in headers
        try:
            resp._decoder = decoder_for(headers.get("content-encoding"))
        except UpstreamFailure as failure:
            self.broken(failure.message)
            return
        head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        if self._resp is not None:
            self._resp._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        resp, self._resp = self._resp, None  # any byte after this is out of step
        if resp is not None:
            resp._finish()
