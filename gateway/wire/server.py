"""A lean HTTP/1.1 server protocol for uvicorn: `uvicorn.run(..., http=HttpProtocol)`.

Why our own: under load uvicorn's httptools protocol cost ~22 % of the gateway's CPU per
request. It checks each response header with two regexes, writes head and body separately,
arms a keep-alive timer per request and carries features we do not use. This one keeps
uvicorn's contract with its `Server` (constructor, `server_state.connections`, `.tasks`,
`.default_headers`, `shutdown()`), so uvicorn still runs the process: workers, signals,
lifespan, graceful shutdown. It checks the whole head in one C call, sends a non-streamed
response in one write and keeps one timer per connection. Left out: websockets (an
upgrade is served as plain HTTP, as by uvicorn without a websocket library),
`limit_concurrency`, access logging, `reset_contextvars`. Proxy headers are middleware in
`config.loaded_app`, so they still work when asked for.

Added (`ServerLimits`, limits uvicorn lacks): a request's head must end within
`header_timeout_s` of its first byte and its body within `request_timeout_s` (408), a
head is at most `max_head_bytes` (431), and a process holds at most `max_connections`
(more are answered 503 and closed), so slow or half-open clients cannot hold a process's
file descriptors or memory. Deadlines (keep-alive's, the head's, the body's) are checked
by one timer per server, every `tick_s` at most a second: no timer per request, nor per
connection, nor a parser before a connection's first head has ended (an idle or
half-open connection costs that much less); an idle connection
is closed at the first tick past its keep-alive, never before, and a keep-alive response
says how long that is (`keep-alive: timeout=N`). A body that turns out malformed, or
late, after the app has started reaches the app as `RequestBodyError` from `receive()`,
so the app answers it in its own error format (a 400 or 408), then the connection
closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from gateway.http.asgi import ON_DISCONNECT, RequestBodyError
from gateway.wire.limits import ServerLimits
from gateway.wire.server_cycle import App, Cycle, Flow, default_block
from gateway.wire.trimmer import Trimmer

log = logging.getLogger("uvicorn.error")

_BAD = b"Invalid HTTP request received."
_BAD_BODY = "Invalid HTTP request body received."
# What the parser is in: between requests, in a head, in a body.
IDLE, HEAD, BODY = 0, 1, 2


class _Noted:
    """A client's misbehaviour, logged at most once a minute per kind, with a count: a
    flood of bad or slow clients must not flood the log."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.since: dict[str, int] = {}

    def __call__(self, message: str) -> None:
        now, count = time.monotonic(), self.since.get(message, 0) + 1
        if now - self.last.get(message, -60.0) < 60:
            self.since[message] = count
            return
        log.warning(message if count == 1 else f"{message} ({count} in the last minute)")
        self.last[message], self.since[message] = now, 0


_note = _Noted()


class _Sweeper:
    """One server's timer: every `period` it gives each connection the time, to act on
    its deadlines; it stops while the server has no connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any],
                 period: float) -> None:
        self.loop, self.connections, self.period = loop, connections, period
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.handle is None:
            self.handle = self.loop.call_later(self.period, self._sweep)

    def _sweep(self) -> None:
        self.handle = None
        if self.connections:
            now = self.loop.time()
            for conn in tuple(self.connections):  # (a close may leave the set meanwhile)
                conn.tick(now)
            self.start()
_NO_HEADERS: list[tuple[bytes, bytes]] = []  # never appended to: a head starts its own
_ASGI: dict[str, dict[str, str]] = {}


def _asgi(version: str) -> dict[str, str]:
    """scope["asgi"], one dict per version for every connection."""
    return _ASGI.setdefault(version, {"version": version, "spec_version": "2.3"})


_HINTS: dict[float, bytes] = {}


def keep_alive_hint(keep_alive_s: float) -> bytes:
    """The `keep-alive: timeout=N` header line a keep-alive response carries, one per
    value for every connection. N is whole seconds, rounded down (never longer than the
    server keeps the connection): a client that reads it (Node's undici, the OpenAI Node
    SDK's fetch) lets its idle connection go before the server closes it."""
    hint = _HINTS.get(keep_alive_s)
    if hint is None:
        hint = _HINTS[keep_alive_s] = b"keep-alive: timeout=%d\r\n" % int(keep_alive_s)
    return hint


_DRAIN_IDLE_S = 1.0  # a draining server's idle connections: closed after this long idle
_trimmer = Trimmer()  # the process's memory back after a flood of connections


class HttpProtocol(asyncio.Protocol):
    """One client connection: parses requests, runs each as a `Cycle`, in order."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None,
                 limits: ServerLimits | None = None) -> None:
        if not config.loaded:
            config.load()
        self.app: App = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state
        self.app_state = app_state
        self.root_path: str = config.root_path
        self.asgi = _asgi(config.asgi_version)
        self.keep_alive_s: float = config.timeout_keep_alive
        self.keep_alive_hint = keep_alive_hint(self.keep_alive_s)
        self.limits = limits = limits or ServerLimits()
        # How often deadlines are checked (how late one may be seen): a fraction of the
        # shortest, at most a second.
        self.tick_s = min(1.0, self.keep_alive_s / 4, limits.header_timeout_s / 4,
                          limits.request_timeout_s / 4)
        # Made once the first head has ended (gathered in `first_head` till then): a
        # connection that sends none, or never ends its head, costs no parser.
        self.parser: httptools.HttpRequestParser = None  # type: ignore[assignment]
        self.first_head: bytearray | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.flow: Flow = None  # type: ignore[assignment]
        self.cycle: Cycle = None  # type: ignore[assignment]  # the request being parsed
        self.active: Cycle | None = None  # the request being answered
        self.pipeline: list[Cycle] = []  # parsed, waiting for `active` to finish
        self.idle_since = 0.0
        self.draining = False  # the server is stopping: this connection closes soon
        self.phase = IDLE
        self.since = 0.0  # the first byte of the request being parsed
        self.head_bytes = 0  # of its head, counted from the second read it spans
        self.check_head = False  # this read is larger than a head may be: measure it
        self.rejected: tuple[int, bytes] | None = None  # why a callback stopped the parser
        self.stopped = False  # the parser stopped: nothing more is read
        # The request being parsed (a list of its own from its first byte on).
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = _NO_HEADERS
        self.expect_100 = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.flow = Flow(transport, self.loop)
        connections = self.state.connections
        if len(connections) >= self.limits.max_connections:
            _note(f"Refused a connection over the limit of {self.limits.max_connections} "
                  "(server.limits.max_connections).")
            self.reject(503, b"Too many connections.", b"retry-after: 1\r\n")
            return
        connections.add(self)  # type: ignore[arg-type]
        _trimmer.seen(len(connections), self.loop)
        sweeper: _Sweeper | None = getattr(self.state, "turnout_sweeper", None)
        if sweeper is None:
            sweeper = self.state.turnout_sweeper = _Sweeper(  # type: ignore[attr-defined]
                self.loop, connections, self.tick_s)
        sweeper.start()
        # (The addresses are asked for with the first request: an idle or half-open
        # connection costs as little memory as can be.)
        self._idle()  # a connection that never sends a request times out too

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        _trimmer.seen(len(self.state.connections), self.loop)
        if self.cycle is not None:  # (no tuple of them: a flood's would pin memory)
            self.cycle.gone()
        if self.active is not None:
            self.active.gone()
        for cycle in self.pipeline:
            cycle.gone()
        self.pipeline.clear()
        self.flow.resume_writing()  # senders waiting to drain wake up and see the disconnect
        # Break the reference cycles (parser <-> protocol <-> cycle): the connection's
        # memory goes back when it closes, not at some later full garbage collection.
        self.stopped, self.active, self.cycle = True, None, None  # type: ignore[assignment]
        self.parser = None  # type: ignore[assignment]

    def data_received(self, data: bytes | bytearray) -> None:
        if self.stopped:
            return
        limit = self.limits.max_head_bytes
        parser = self.parser
        if parser is None:
            data = self._first_head(data, limit)
            if not data:
                return
            parser = self.parser = httptools.HttpRequestParser(self)
            # Answer the first of pipelined requests even if a later one says "close".
            parser.set_dangerous_leniencies(lenient_data_after_close=True)
        if self.phase == HEAD:  # a head that began in an earlier read: all of this is it
            self.head_bytes += len(data)
        self.check_head = len(data) > limit
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # served as HTTP; the parser can't go on: close
            _note("Unsupported upgrade request.")
            self.stopped, self.phase = True, IDLE
            if self.cycle is not None and not self.cycle.complete:
                self.cycle.keep_alive = False
            else:
                self.transport.close()
            return
        except httptools.HttpParserError:
            self._parse_error()
            return
        if self.phase == HEAD and self.head_bytes > limit:  # before llhttp buffers more
            self._head_too_large()

    def _first_head(self, data: bytes | bytearray, limit: int) -> bytes | bytearray:
        """A new connection's reads until its first head has ended (a blank line), then
        all of them at once; nothing while it has not. Why: a parser and its bound
        callbacks are ~1 KB of small objects, and after a flood of half-open connections
        those would leave the allocator's arenas pinned by the few objects that outlive
        the flood; a head's bytes are one buffer."""
        head = self.first_head
        if head is None:
            if b"\n\r\n" in data or b"\n\n" in data:  # the usual case: one read, whole
                return data
            head = self.first_head = bytearray(data)
            self.phase, self.since = HEAD, self.loop.time()
        else:
            start = max(0, len(head) - 2)
            head += data
            if head.find(b"\n\r\n", start) >= 0 or head.find(b"\n\n", start) >= 0:
                self.first_head = None
                return head
        if len(head) > limit:
            self._head_too_large()
        return b""

    def _parse_error(self) -> None:
        self.stopped = True
        cycle = self.cycle
        if self.rejected is not None:
            self.reject(*self.rejected)
        elif self.phase == BODY and not (cycle.started or cycle.complete):
            # The head was fine and the app has the request: it answers in its own format.
            _note(_BAD_BODY)
            self.phase = IDLE
            cycle.fail(RequestBodyError(400, _BAD_BODY))
        else:
            _note("Invalid HTTP request received.")
            active = self.active
            if active is None or not active.started or active.head is not None:
                self.reject(400, _BAD)  # nothing of a response written yet (as uvicorn)
            self.transport.close()  # else a response is under way: only hang up

    def _head_too_large(self) -> None:
        _note(f"Request head over {self.limits.max_head_bytes} bytes.")
        self.stopped = True
        if self.active is None:
            self.reject(431, b"Request header fields too large.")
        self.transport.close()

    def reject(self, status: int, message: bytes, extra: bytes = b"") -> None:
        """Answer `status` with `message` as text, outside any request cycle, and close."""
        self.stopped = True
        self.transport.write(b"".join((
            STATUS_LINE[status], default_block(self.state.default_headers),
            b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n%b"
            b"content-length: %d\r\n\r\n%b" % (extra, len(message), message))))
        self.transport.close()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.phase != HEAD:  # (HEAD: a first head gathered since its first byte)
            self.since = self.loop.time()
        self.phase, self.head_bytes = HEAD, 0
        self.url, self.headers, self.expect_100 = b"", [], False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase != HEAD:  # a chunked body's trailers: not passed on, not kept
            return
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100 = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser, url, root = self.parser, self.url, self.root_path
        self.phase = BODY
        if self.head_bytes or self.check_head:  # a head over several reads, or a big one
            size = len(url) + sum([len(n) + len(v) + 4 for n, v in self.headers])
            if size > self.limits.max_head_bytes:
                self.rejected = (431, b"Request header fields too large.")
                raise httptools.HttpParserError("head too large")  # stops the parser
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
        if self.client is None:  # the connection's first request
            transport = self.transport
            self.server, self.client = get_local_addr(transport), get_remote_addr(transport)
            self.scheme = "https" if is_ssl(transport) else "http"
        scope = {
            "type": "http", "asgi": self.asgi, "http_version": version, "method": method,
            "scheme": self.scheme, "path": path, "raw_path": raw_path, "query_string": query,
            "root_path": root, "headers": self.headers, "client": self.client,
            "server": self.server, "state": self.app_state.copy(),
        }
        cycle = self.cycle = Cycle(self, scope, parser.should_keep_alive() and not self.draining,
                                   self.expect_100, version == "1.0", method == "HEAD")
        scope["extensions"] = {ON_DISCONNECT: cycle.on_disconnect}
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
        self.phase = IDLE
        cycle = self.cycle
        if not cycle.complete:
            cycle.more_body = False
            if cycle.event is not None:
                cycle.wake()

    def shutdown(self) -> None:
        """uvicorn's graceful stop (a drain). A client must learn that its connection is
        closing before the server closes it, or it may send a request into the close and
        lose it: a response whose head has not gone out says `connection: close`; a
        connection idle (or once a response already under way has ended) is closed after
        _DRAIN_IDLE_S without a request, and a request that comes sooner is answered,
        with `connection: close`."""
        self.draining = True
        last = self.pipeline[-1] if self.pipeline else self.active
        if last is not None and not last.started:
            last.keep_alive = False
        elif self.active is None:
            self._idle()  # the grace starts now

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
            self._run(self.pipeline.pop(0))
            if self.phase == BODY and self.cycle is self.active:  # its body is read from now
                self.since = self.loop.time()
        else:
            self.active = None
            self._idle()
        if not self.pipeline:
            self.flow.resume_reading()

    def _idle(self) -> None:
        self.idle_since = self.loop.time()

    def tick(self, now: float) -> None:
        """The server's timer: act on a deadline that has passed."""
        if self.stopped or self.transport.is_closing():
            return
        phase, limits = self.phase, self.limits
        if phase == HEAD:
            due = self.since + limits.header_timeout_s
        elif phase == BODY and (self.active is None or self.cycle is self.active):
            due = self.since + limits.request_timeout_s
        elif phase == IDLE and self.active is None:  # a first request is not waited for long
            idle_s = (self.keep_alive_s if self.parser is not None
                      else min(self.keep_alive_s, limits.header_timeout_s))
            due = self.idle_since + (min(idle_s, _DRAIN_IDLE_S) if self.draining else idle_s)
        else:  # answering (a queued request's body is not read yet): no deadline
            return
        if now < due:
            return
        if phase == HEAD:
            self._late(f"head not received within {limits.header_timeout_s:g}s")
        elif phase == BODY:
            self._late(f"body not received within {limits.request_timeout_s:g}s")
        else:
            self.transport.close()

    def _late(self, what: str) -> None:
        """A request's head or body missed its deadline: 408 and close, in the app's
        format when the app has the request already."""
        _note(f"Request {what}.")
        cycle, self.stopped = self.cycle, True
        if self.phase == BODY and not (cycle.started or cycle.complete):
            self.phase = IDLE
            cycle.fail(RequestBodyError(408, f"Request {what}."))
        elif self.active is None:
            self.reject(408, f"Request {what}.".encode())
        else:  # a response is under way (a pipelined head stalls): end with it
            (self.pipeline[-1] if self.pipeline else self.active).keep_alive = False
            if self.phase == BODY:
                self.transport.close()
