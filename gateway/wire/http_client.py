"""The upstream HTTP client (`HttpClient` in base.py): one pool of keep-alive HTTP/1.1
connections per origin, shared by every request of the process.

Our own, on asyncio protocols and llhttp (httptools), because on the hot path a
general-purpose client costs more CPU than the rest of the gateway together: we measured
aiohttp's request path at ~20 % of a request's CPU (URL objects, header multidicts,
timers, tracing hooks, a stream reader per response). What a proxy needs is small: send a
buffered body, read a head, then the body whole or line by line. The caller decides its
timeouts (`gateway/dispatch/dispatcher.py`) and passes them as deadlines on the loop's
clock; the client enforces them with one timer while it waits.

`UpstreamClient` keeps the pools and sends; a `Connection` is one socket fed into llhttp
(no stream reader, no per-request timer or task); its `Response` buffers the body for
`read()` (whole) or `readline()` (SSE). A connection goes back to its pool only once its
response was read to the end, and is dropped at the first sign that it is out of step
(bytes nobody asked for, a body that ended badly).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from gateway.canonical import FailureKind, UpstreamFailure, UpstreamRequest
from gateway.wire.http_codec import Decoder, decoder_for, encode_request, expire, failure

__all__ = ["CUT_OFF", "Response", "UpstreamClient"]

CUT_OFF = "the upstream ended the response before it finished"
_PAUSE_AT = 256 * 1024  # buffered and unread by readline(): stop reading the socket

# A kept-alive connection idle longer is not reused: under uvicorn's (vLLM's) 5 s, so we
# do not write to one the server is closing (a request lost that way is not resent).
_IDLE_S = 4.0
_MAX_TARGETS = 1024  # parsed URLs remembered (a bounded set: deployments x operations)


class _Origin:
    """The idle connections to one scheme://host:port, most recently used last."""

    __slots__ = ("closed", "host", "idle", "port", "server_hostname", "ssl")

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.host = host
        self.port = port
        self.ssl = tls
        self.server_hostname = host if tls is not None else None
        self.idle: deque[Connection] = deque()
        self.closed = False  # the client closed: connections coming back are closed

    def take(self, now: float) -> Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < _IDLE_S:
                return conn
            conn.close()
        return None

    def put(self, conn: Connection) -> None:
        if self.closed:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)

    def gone(self, conn: Connection) -> None:
        with contextlib.suppress(ValueError):  # it was in use, not idle
            self.idle.remove(conn)


class UpstreamClient:
    def __init__(self, *, connect_timeout: float, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context  # None: the system's trust store, made on first HTTPS use
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._targets: dict[str, tuple[_Origin, str, str]] = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop it runs on (asked for once: on Python 3.11 each get_running_loop()
        makes a getpid() system call), for callers' deadlines on the same clock."""
        assert self._loop is not None, "UpstreamClient.start() was not awaited"
        return self._loop

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._origins.clear()
        self._targets.clear()

    async def close(self) -> None:
        self._closed = True
        for origin in self._origins.values():
            origin.closed = True
            while origin.idle:
                origin.idle.pop().close()

    async def send(self, req: UpstreamRequest, deadline: float | None = None) -> Response:
        """Send and wait for the response head (TimeoutError if it is not in by
        `deadline`, on the loop's clock); the caller reads the body and then releases
        (or closes) the response."""
        origin, path, host = self._target(req.url)
        data = encode_request(req, path, host)
        loop = self.loop
        conn = origin.take(loop.time()) or await self._connect(origin, deadline)
        head = conn.request(data)
        timer = loop.call_at(deadline, expire, head) if deadline is not None else None
        try:
            return await head
        except BaseException:
            conn.close()  # cancelled or failed mid-request: the connection is unusable
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _target(self, url: str) -> tuple[_Origin, str, str]:
        known = self._targets.get(url)
        if known is not None:
            return known
        try:  # (the error's text would quote the URL: it may hold a secret)
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise UpstreamFailure(FailureKind.CONNECT, "not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamFailure(FailureKind.CONNECT, "not an http(s) URL")
        key = (parts.scheme, parts.hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(parts.hostname, port,
                                                  self._tls() if tls else None)
        host = parts.netloc.rpartition("@")[2]  # never send userinfo along
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()
        known = self._targets[url] = (origin, path, host)
        return known

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _connect(self, origin: _Origin, deadline: float | None) -> Connection:
        """A new connection within the connect timeout (a CONNECT failure), or by the
        request's `deadline` when that comes first (TimeoutError)."""
        if self._closed:
            raise UpstreamFailure(FailureKind.CONNECT, "the client is closed")
        loop = self.loop
        limit = loop.time() + self._connect_timeout
        try:
            async with asyncio.timeout_at(limit if deadline is None else min(limit, deadline)):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, origin.put, origin.gone), origin.host, origin.port,
                    ssl=origin.ssl, server_hostname=origin.server_hostname)
        except TimeoutError:
            if deadline is not None and deadline < limit:
                raise
            raise UpstreamFailure(FailureKind.CONNECT, f"cannot connect within "
                                  f"{self._connect_timeout:g}s") from None
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise UpstreamFailure(FailureKind.CONNECT, f"cannot connect ({reason})") from None
        return conn


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
        self._decoder: Decoder | None = None
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
                self._fail(failure("the upstream sent a truncated compressed body"))
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
        error = failure(message)
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self._reading is not None:
            self._reading._fail(error)
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
