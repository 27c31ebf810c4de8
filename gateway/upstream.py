"""The upstream HTTP client: one pool of keep-alive HTTP/1.1 connections per origin,
shared by every request of the process.

Our own, on asyncio protocols and llhttp (`gateway/upstream_http.py`), because on the hot
path a general-purpose client costs more CPU than the rest of the gateway together: we
measured aiohttp's request path at ~20 % of a request's CPU (URL objects, header
multidicts, timers, tracing hooks, a stream reader per response). What a proxy needs is
small: send a buffered body, read a head, then the body whole or line by line.
The caller decides its timeouts (`gateway/attempts.py`) and passes them as deadlines on
the loop's clock; the client enforces them with one timer while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from urllib.parse import urlsplit

from gateway.canonical import FailureKind, UpstreamFailure, UpstreamRequest
from gateway.upstream_http import CUT_OFF, Connection, Response, expire

__all__ = ["CUT_OFF", "Response", "UpstreamClient"]

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
        data = _encode(req, path, host)
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

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes] | None:
        """GET `url` (background probes and scrapes): status and body, or None when it
        cannot be had in time."""
        deadline = self.loop.time() + timeout_s
        try:
            resp = await self.send(UpstreamRequest("GET", url, {}, b""), deadline)
            try:
                return resp.status, await resp.read(deadline)
            finally:
                resp.release()
        except (TimeoutError, UpstreamFailure):
            return None

    async def get_status(self, url: str, timeout_s: float) -> int | None:
        got = await self.get(url, timeout_s)
        return None if got is None else got[0]

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


# Framing is ours to write: a configured header of these names is not sent twice.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "accept-encoding",
                      "connection"})


def _encode(req: UpstreamRequest, path: str, host: str) -> bytes:
    lines = [f"{req.method} {path} HTTP/1.1\r\nhost: {host}\r\n"
             f"accept-encoding: gzip, deflate\r\ncontent-length: {len(req.body)}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in req.headers.items()
              if name.lower() not in _FRAMING]
    lines.append("\r\n")
    head = "".join(lines)
    # A CR or LF inside a name or value would let it inject headers or requests.
    breaks = len(lines) + 3
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise UpstreamFailure(FailureKind.PROTOCOL, "a header holds a line break")
    try:
        return head.encode("latin-1") + req.body
    except UnicodeEncodeError:
        raise UpstreamFailure(FailureKind.PROTOCOL,
                              "a header holds characters HTTP/1.1 cannot carry") from None

