"""Egress through an HTTP proxy: which proxy an upstream is reached through (a provider's
`proxy`, else `HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` unless `NO_PROXY` says not, as
aiohttp's `trust_env` and httpx do), and a CONNECT tunnel for https upstreams. Plain http
upstreams go through the proxy as absolute-form requests (`GET http://host/path`).

Only http:// proxies (as aiohttp). A proxy URL may hold credentials (sent as Basic
`proxy-authorization`), so no error here ever quotes one.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from gateway.canonical import FailureKind, UpstreamFailure

__all__ = ["DIRECT", "EnvProxies", "Proxy", "authority", "open_tunnel", "parse_proxy"]

DIRECT = "direct"  # a provider's `proxy: direct`: never a proxy, whatever the environment
_MAX_ANSWER = 16 * 1024  # a proxy's answer to CONNECT is a few lines

P = TypeVar("P", bound=asyncio.Protocol)


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    auth: str  # b"proxy-authorization: ...\r\n" as text, or ""

    def __repr__(self) -> str:  # never the credentials
        return f"Proxy({self.host}:{self.port})"


def parse_proxy(url: str) -> Proxy:
    """An http:// proxy URL (`host:port` alone means http://); ValueError otherwise, with a
    message that does not quote the URL."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        raise ValueError("not a valid proxy URL") from None
    if parts.scheme != "http":
        raise ValueError("only http:// proxies are supported")
    if not parts.hostname:
        raise ValueError("a proxy URL needs a host")
    auth = ""
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = f"proxy-authorization: Basic {base64.b64encode(pair.encode()).decode()}\r\n"
    return Proxy(parts.hostname, port, auth)


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EnvProxies:
    """The proxies the environment names, read once (the process's environment does not
    change under it). An unusable one fails the requests it would carry, never silently
    goes direct: an egress proxy is often the only way out."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        found = urllib.request.getproxies_environment() if env is None else dict(env)
        self._by_scheme: dict[str, Proxy | str] = {}
        for scheme in ("http", "https"):
            url = found.get(scheme) or found.get("all")
            if url:
                try:
                    self._by_scheme[scheme] = parse_proxy(url)
                except ValueError as err:
                    self._by_scheme[scheme] = f"{scheme.upper()}_PROXY: {err}"
        self._bypass = tuple(r.strip().lower() for r in found.get("no", "").split(",")
                             if r.strip())

    def for_origin(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy for scheme://host:port; None: direct. Loopback is always direct (as
        Go's ProxyFromEnvironment): a local sidecar or test server is never proxied."""
        proxy = self._by_scheme.get(scheme)
        if proxy is None or bypassed(host, port, self._bypass):
            return None
        if isinstance(proxy, str):
            raise UpstreamFailure(FailureKind.CONNECT, proxy)
        return proxy


def bypassed(host: str, port: int, rules: tuple[str, ...]) -> bool:
    """NO_PROXY as curl reads it: `*`, domains (and their subdomains, a leading dot or
    not), IP addresses and CIDR ranges, each optionally with a :port."""
    host = host.lower().rstrip(".")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if host == "localhost" or host.endswith(".localhost") or (ip is not None and
                                                              ip.is_loopback):
        return True
    for rule in rules:
        if rule == "*":
            return True
        name, rule_port = _split_port(rule)
        if rule_port is not None and rule_port != port:
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip("*").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _split_port(rule: str) -> tuple[str, int | None]:
    if rule.startswith("["):  # [v6]:port
        name, _, rest = rule[1:].partition("]")
        return name, int(rest[1:]) if rest[1:].isdigit() else None
    if rule.count(":") == 1:
        name, _, port = rule.partition(":")
        return name, int(port) if port.isdigit() else None
    return rule, None


class _Answer(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: its status, once the head has ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head = bytearray()
        self.status: asyncio.Future[int] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self.status.done():  # bytes before our TLS hello: the tunnel is out of step
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > _MAX_ANSWER:
                self.status.set_exception(UpstreamFailure(
                    FailureKind.CONNECT, "the proxy's answer to CONNECT is too long"))
            return
        line = bytes(self.head[:self.head.find(b"\r\n")]).split(None, 2)
        if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
            self.status.set_exception(UpstreamFailure(
                FailureKind.CONNECT, "the proxy's answer to CONNECT is not HTTP"))
        elif len(self.head) > end + 4:
            self.status.set_exception(UpstreamFailure(
                FailureKind.CONNECT, "the proxy sent bytes after its answer to CONNECT"))
        else:
            self.status.set_result(int(line[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(UpstreamFailure(
                FailureKind.CONNECT, "the proxy closed the connection during CONNECT"))


async def open_tunnel(loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int,
                      factory: Callable[[], P], tls: ssl.SSLContext,
                      server_hostname: str) -> P:
    """A TLS connection to host:port through a CONNECT tunnel, its protocol made by
    `factory`. The caller bounds the time it may take."""
    transport, answer = await loop.create_connection(lambda: _Answer(loop), proxy.host,
                                                     proxy.port)
    try:
        target = authority(host, port)
        transport.write(f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{proxy.auth}\r\n"
                        .encode("latin-1"))
        status = await answer.status
        if status != 200:
            raise UpstreamFailure(FailureKind.CONNECT, f"the proxy refused the tunnel ({status})")
        protocol = factory()
        secured = await loop.start_tls(transport, protocol, tls, server_hostname=server_hostname)
        if secured is None:  # start_tls returns None only when the transport closed
            raise UpstreamFailure(FailureKind.CONNECT, "the tunnel closed during TLS setup")
        protocol.connection_made(secured)  # start_tls leaves that to us
        return protocol
    except BaseException:
        transport.close()
        raise
