"""The upstream HTTP client (`HttpClient` in base.py): one pool of keep-alive HTTP/1.1
connections per origin, shared by every request of the process.

Our own, on asyncio protocols and llhttp (httptools), because on the hot path a
general-purpose client costs more CPU than the rest of the gateway together: we measured
aiohttp's request path at ~20 % of a request's CPU (URL objects, header multidicts,
timers, tracing hooks, a stream reader per response). What a proxy needs is small: send a
buffered body, read a head, then the body whole or line by line. The caller decides its
timeouts (`gateway/dispatch/dispatcher.py`) and passes them as deadlines on the loop's
clock; the client enforces them with one timer while it waits.

`UpstreamClient` keeps the pools and sends; a `Connection` (`http_connection.py`) is one
socket fed into llhttp, its `Response` the body as it arrives, both held to the caps of
`ClientLimits`. A connection goes back to its pool only once its response was read to
the end, and is dropped at the first sign that it is out of step (bytes nobody asked for,
a body that ended badly) or over a cap. Upstreams are reached directly or through an HTTP
proxy (`proxy.py`: the environment's, or a provider's own), with the system's trust store
or a provider's CA and client certificate (`tls.py`). Redirects are never followed: a
3xx fails as a protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Sequence
from urllib.parse import urlsplit

from gateway.canonical import FailureKind, UpstreamFailure, UpstreamRequest
from gateway.wire.http_codec import encode_request, expire
from gateway.wire.http_connection import CUT_OFF, Connection, Response
from gateway.wire.limits import ClientLimits
from gateway.wire.proxy import DIRECT, EnvProxies, Proxy, open_tunnel, parse_proxy
from gateway.wire.tls import Egress, client_context

__all__ = ["CUT_OFF", "Response", "UpstreamClient"]

# A kept-alive connection idle longer is not reused: under uvicorn's (vLLM's) 5 s, so we
# do not write to one the server is closing (a request lost that way is not resent).
_IDLE_S = 4.0
_MAX_TARGETS = 1024  # parsed URLs remembered (a bounded set: deployments x operations)


class _Origin:
    """The idle connections to one scheme://host:port (and way there), most recently used
    last. `proxy`: reached through it, by a CONNECT tunnel when `ssl` is set, else with
    absolute-form requests carrying `extra` (the proxy's authorization)."""

    __slots__ = ("closed", "extra", "host", "idle", "port", "proxy", "server_hostname", "ssl")

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None,
                 proxy: Proxy | None) -> None:
        self.host = host
        self.port = port
        self.ssl = tls
        self.server_hostname = host if tls is not None else None
        self.proxy = proxy
        self.extra = proxy.auth if proxy is not None and tls is None else ""
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
    """`egress`: (base URL, how to reach it) for upstreams with their own proxy, CA or
    client certificate, longest prefix first; `trust_env`: proxies from the environment
    for the rest (and for those whose `proxy` is unset)."""

    def __init__(self, *, connect_timeout: float, ssl_context: ssl.SSLContext | None = None,
                 limits: ClientLimits | None = None,
                 egress: Sequence[tuple[str, Egress]] = (), trust_env: bool = True) -> None:
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context  # None: the system's trust store, made on first HTTPS use
        self.limits = limits or ClientLimits()
        # Contexts made now: a bad CA or key file stops the start, not a request later.
        self._egress = sorted(((prefix.rstrip("/"), e, client_context(e) if e.custom_tls
                                else None) for prefix, e in egress),
                              key=lambda item: -len(item[0]))
        self._env = EnvProxies() if trust_env else None
        self._origins: dict[tuple[str, str, int, Egress | None], _Origin] = {}
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
        data = encode_request(req, path, host, origin.extra)
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
        egress, context = self._egress_for(url)
        key = (parts.scheme, parts.hostname, port, egress)
        origin = self._origins.get(key)
        if origin is None:
            proxy = self._proxy(egress, parts.scheme, parts.hostname, port)
            origin = self._origins[key] = _Origin(
                parts.hostname, port, (context or self._tls()) if tls else None, proxy)
        host = parts.netloc.rpartition("@")[2]  # never send userinfo along
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if origin.proxy is not None and not tls:  # the proxy needs to know where to
            path = f"http://{host}{path}"
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()
        known = self._targets[url] = (origin, path, host)
        return known

    def _egress_for(self, url: str) -> tuple[Egress | None, ssl.SSLContext | None]:
        for prefix, egress, context in self._egress:
            if url.startswith(prefix) and url[len(prefix):len(prefix) + 1] in ("", "/", "?"):
                return egress, context
        return None, None

    def _proxy(self, egress: Egress | None, scheme: str, host: str, port: int
               ) -> Proxy | None:
        if egress is not None and egress.proxy:
            if egress.proxy == DIRECT:
                return None
            try:
                return parse_proxy(egress.proxy)
            except ValueError as err:
                raise UpstreamFailure(FailureKind.CONNECT, f"proxy: {err}") from None
        return self._env.for_origin(scheme, host, port) if self._env is not None else None

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = client_context()
        return self._ssl

    async def _connect(self, origin: _Origin, deadline: float | None) -> Connection:
        """A new connection within the connect timeout (a CONNECT failure), or by the
        request's `deadline` when that comes first (TimeoutError)."""
        if self._closed:
            raise UpstreamFailure(FailureKind.CONNECT, "the client is closed")
        loop, limits = self.loop, self.limits
        limit = loop.time() + self._connect_timeout
        proxy = origin.proxy

        def connection() -> Connection:
            return Connection(loop, origin.put, origin.gone, limits)

        try:
            async with asyncio.timeout_at(limit if deadline is None else min(limit, deadline)):
                if proxy is None:
                    _, conn = await loop.create_connection(
                        connection, origin.host, origin.port, ssl=origin.ssl,
                        server_hostname=origin.server_hostname)
                elif origin.ssl is None:  # plain http: absolute-form requests to the proxy
                    _, conn = await loop.create_connection(connection, proxy.host, proxy.port)
                else:
                    assert origin.server_hostname is not None
                    conn = await open_tunnel(loop, proxy, origin.host, origin.port, connection,
                                             origin.ssl, origin.server_hostname)
        except TimeoutError:
            if deadline is not None and deadline < limit:
                raise
            raise UpstreamFailure(FailureKind.CONNECT, f"cannot connect within "
                                  f"{self._connect_timeout:g}s") from None
        except OSError as err:  # ssl.SSLError (an untrusted certificate) included
            reason = getattr(err, "reason", None) or err.strerror or type(err).__name__
            via = " through the proxy" if proxy is not None else ""
            raise UpstreamFailure(FailureKind.CONNECT,
                                  f"cannot connect{via} ({reason})") from None
        return conn
