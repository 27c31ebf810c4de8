"""One keep-alive connection to an upstream (`Connection`: a socket fed into llhttp, no
stream reader, no per-request timer or task) and the response it is receiving
(`Response`: buffers the body for `read()`, whole, or `readline()`, SSE). The pool and
the requests are `http_client.py`'s.

Every cap of `ClientLimits` is enforced here, as bytes arrive: the head's size and header
count before llhttp has buffered them, the body (decoded) before it is appended. Over one,
the connection is dropped and the request fails as `upstream_protocol_error`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import cast

import httptools

from gateway.canonical import FailureKind, UpstreamFailure
from gateway.wire.http_codec import Decoder, decoder_for, expire, failure
from gateway.wire.limits import ClientLimits

__all__ = ["CUT_OFF", "Connection", "Response"]

CUT_OFF = "the upstream ended the response before it finished"
_PAUSE_AT = 256 * 1024  # buffered and unread by readline(): stop reading the socket
_RATIO_FLOOR = 1024 * 1024  # decoded bytes always allowed before the ratio cap applies


class Response:
    """Status and headers at once; the body as it arrives. `release()` or `close()` must
    end it: release keeps the connection for reuse when the body was read to the end.
    Past the body cap (or the smaller one of an error answer), the SSE event cap or the
    decompression ratio, the connection is dropped and the read fails as a protocol
    error: one upstream never makes the process hold more than the caps."""

    __slots__ = ("_buf", "_conn", "_decoded", "_decoder", "_done", "_error", "_event",
                 "_fed", "_max", "_released", "_waiter", "_whole", "headers", "status")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}  # names lower-cased; repeats joined with ", "
        self._buf = bytearray()
        self._decoder: Decoder | None = None
        self._done = False
        self._error: UpstreamFailure | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._whole = False  # read() wants it all: no back-pressure
        self._fed = 0  # body bytes arrived (encoded)
        self._decoded = 0  # and decoded, when a content-coding is in use
        self._max = conn.limits.max_body_bytes  # held at once (the error cap for errors)
        self._event = 0  # bytes of the SSE event readline() is in (since a blank line)

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
                # An event ends at a blank line; until then its lines add up.
                self._event = 0 if end == 0 or line == b"\r\n" else self._event + end + 1
                return line
            if self._done:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            if self._event + len(self._buf) > self._conn.limits.max_sse_event_bytes:
                self._conn.broken(f"the upstream sent an event over the limit of "
                                  f"{self._conn.limits.max_sse_event_bytes} bytes")
                continue
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
        self._fed += len(data)
        decoder = self._decoder
        if decoder is not None:
            limits = self._conn.limits
            # Never inflate past the cap, nor past the ratio: a small bomb stays small.
            room = min(self._max - len(self._buf),
                       max(int(self._fed * limits.max_decompression_ratio), _RATIO_FLOOR)
                       - self._decoded)
            try:
                data = decoder.decode(data, max(room, 0))
            except zlib.error:
                self._conn.broken("the upstream sent a corrupt compressed body")
                return
            self._decoded += len(data)
            if len(data) > room and len(self._buf) + len(data) <= self._max:
                self._conn.broken(f"the upstream's compressed body inflates more than "
                                  f"{limits.max_decompression_ratio:g} times")
                return
        self._buf += data
        if len(self._buf) > self._max:
            self._conn.broken(f"the upstream's body is over the limit of {self._max} bytes")
            return
        self._wake()
        if not self._whole and len(self._buf) > _PAUSE_AT:
            self._conn.pause()

    def _finish(self) -> None:
        if self._decoder is not None:
            try:
                self._buf += self._decoder.finish(self._fed > 0)
            except zlib.error:
                self._fail(failure("the upstream sent a truncated compressed body"))
                return
        self._done = True
        self._wake()

    def _fail(self, error: UpstreamFailure) -> None:
        if not self._done:
            self._error = error
            self._done = True
            self._buf.clear()  # nothing more is read from it: let the memory go now
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _OverLimit(Exception):
    """Raised in a parser callback: stops llhttp at once (the reason is kept aside)."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time. `on_idle(self)` hands it back to
    its pool, `on_gone(self)` tells the pool it closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_idle: Callable[[Connection], None],
                 on_gone: Callable[[Connection], None], limits: ClientLimits) -> None:
        self.loop = loop
        self.limits = limits
        self._on_idle = on_idle
        self._on_gone = on_gone
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._head: asyncio.Future[Response] | None = None
        self._resp: Response | None = None  # the response being received, until complete
        self._reading: Response | None = None  # the response handed out, until released
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # received since the request, until its (final) head ended
        self._in_head = False
        self._over: str | None = None  # why a callback stopped the parser
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
        self._head_bytes, self._in_head = 0, True
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

    def broken(self, message: str, kind: FailureKind = FailureKind.PROTOCOL) -> None:
        """Out of step with the server, or over a limit: fail what is waiting, never reuse
        the connection."""
        error = UpstreamFailure(kind, message)
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self._reading is not None:
            self._reading._fail(error)
        self._resp = None  # any byte still in flight is nobody's
        self.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._resp is None:  # nothing asked for: a connection out of step
            self.close()
            return
        if self._in_head:  # bounded before llhttp buffers it: one huge header included
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            self.broken(self._over or f"bad HTTP response from the upstream "
                        f"({type(err).__name__})")
            return
        if self._in_head and self._head_bytes > self.limits.max_head_bytes:
            self.broken(f"the upstream's response head is over the limit of "
                        f"{self.limits.max_head_bytes} bytes")

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_gone(self)
        if self._head is not None and not self._head.done():
            # Never resent: the server may have acted on it (`_IDLE_S` above keeps us
            # from reusing connections servers drop).
            self._head.set_exception(UpstreamFailure(
                FailureKind.SERVER, "connection closed before a response"))
        elif self._resp is not None:
            if self._framed or exc is not None:
                self._resp._fail(failure(CUT_OFF))
            else:
                self._resp._finish()  # a body delimited by the connection's end

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._resp is None:  # a second answer to one request: out of step
            self.close()
        self._raw_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        raw = self._raw_headers
        limits = self.limits
        if len(raw) >= limits.max_headers:
            self._over = f"the upstream sent more than {limits.max_headers} headers"
            raise _OverLimit
        if len(name) + len(value) > limits.max_header_bytes:
            self._over = (f"the upstream sent a header over the limit of "
                          f"{limits.max_header_bytes} bytes")
            raise _OverLimit
        raw.append((name, value))

    def on_headers_complete(self) -> None:
        resp, head, parser = self._resp, self._head, self._parser
        if resp is None or head is None or head.done():
            return
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: the answer comes next
            return
        self._in_head = False
        if 300 <= status < 400:  # never followed (a redirect would carry our key along)
            self.broken(f"the upstream answered with a redirect ({status}), "
                        "which is not followed")
            return
        if status == 407:  # from a proxy on the way (absolute-form requests through it)
            self.broken("the proxy refused the request (407)", FailureKind.CONNECT)
            return
        resp.status = status
        if status >= 300:
            resp._max = self.limits.max_error_body_bytes  # only its message is of use
        self._keep_alive = parser.should_keep_alive()  # only valid until the body ends
        headers = resp.headers
        repeated: dict[str, list[str]] | None = None
        for raw_name, raw_value in self._raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name in headers:  # joined once, below: linear in the head's size
                if repeated is None:
                    repeated = {}
                repeated.setdefault(name, [headers[name]]).append(value)
            else:
                headers[name] = value
        if repeated is not None:
            for name, values in repeated.items():
                headers[name] = ", ".join(values)
        self._framed = "content-length" in headers or "transfer-encoding" in headers
        try:
            resp._decoder = decoder_for(headers.get("content-encoding"))
        except UpstreamFailure as err:
            self.broken(err.message)
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
