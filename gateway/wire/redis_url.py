"""Where a Redis connection goes: a `redis.url` parsed once (config checks it the same way,
without opening anything), and the socket opened for a protocol.

The forms redis-py takes, plus the two it has no URL for: several hosts (the seed nodes of
a cluster) and Sentinel, in the form of the Redis-Sentinel-Url package (also Prefect's and
docket's): `redis+sentinel://[user:pass@]host[:port][,host2[:port2]…]/service_name[/db]`,
`rediss+sentinel://` with TLS to the sentinels and the master alike. The URL's credentials
are the master's; the sentinels' own, when they have any, are the `sentinel_username` and
`sentinel_password` options (as redis-py's `sentinel_kwargs`). Errors never quote the URL,
which may hold a password.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote, urlsplit

_QUERY_OPTIONS = frozenset({"db", "username", "password", "ssl_cert_reqs", "ssl_ca_certs",
                            "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"})
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "required": ssl.CERT_REQUIRED}
_SCHEMES = "redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisEndpoint:
    """A parsed Redis URL. The credentials stay out of repr (and so out of logs)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    db: int = 0
    tls: ssl.SSLContext | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def handshake(self) -> list[tuple[str | int, ...]]:
        """The commands that open every connection: AUTH, SELECT."""
        commands: list[tuple[str | int, ...]] = []
        if self.username:  # ACL user
            commands.append(("AUTH", self.username, self.password or ""))
        elif self.password:
            commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands

    def scrub(self, text: str) -> str:
        """`text` with the password masked: for anything that may reach a log."""
        return text.replace(self.password, "***") if self.password else text

    def at(self, host: str, port: int) -> RedisEndpoint:
        """The same credentials and TLS, on another node (a cluster's, Sentinel's master)."""
        return replace(self, host=host, port=port, path=None)


@dataclass(frozen=True)
class SentinelTarget:
    """A `redis+sentinel://` URL: ask `sentinels` where `service`'s master is, then connect
    there as `master` says (its credentials, database and TLS; its host is a placeholder)."""

    sentinels: tuple[RedisEndpoint, ...]
    service: str
    master: RedisEndpoint


# A plain URL names one node, or several (a cluster's seed nodes, tried in order).
RedisTarget = tuple[RedisEndpoint, ...] | SentinelTarget


def parse_url(url: str) -> RedisEndpoint:
    """One node's URL: redis://[[user]:password@]host[:port][/db], rediss://… (TLS),
    unix://[[user]:password@]/path/to.sock; query options db, username, password and
    ssl_cert_reqs / ssl_ca_certs / ssl_certfile / ssl_keyfile / ssl_check_hostname."""
    target = parse_target(url)
    if isinstance(target, SentinelTarget) or len(target) != 1:
        raise ValueError("redis url: names more than one server")
    return target[0]


def parse_target(url: str) -> RedisTarget:
    """Any accepted `redis.url` (see the module's docstring). Errors never quote it."""
    try:
        parts = urlsplit(url)
        options = {name: values[0] for name, values in parse_qs(parts.query).items()}
    except ValueError:
        raise ValueError("redis url: cannot parse it") from None
    scheme = parts.scheme.lower()
    sentinel = scheme in ("redis+sentinel", "rediss+sentinel")
    if scheme not in ("redis", "rediss", "unix") and not sentinel:
        raise ValueError(f"redis url: must start with {_SCHEMES}")
    unknown = options.keys() - _QUERY_OPTIONS - (_SENTINEL_OPTIONS if sentinel else set())
    if unknown:
        raise ValueError(f"redis url: unsupported options {sorted(unknown)}")
    userinfo, _, netloc = parts.netloc.rpartition("@")
    user, _, secret = userinfo.partition(":")
    username = unquote(user) if user else options.get("username")
    password = unquote(secret) if secret else options.get("password")
    path = [unquote(p) for p in parts.path.split("/") if p]
    tls = _tls_context(options) if scheme in ("rediss", "rediss+sentinel") else None
    if scheme == "unix":
        if not parts.path:
            raise ValueError("redis url: unix:// needs a socket path")
        return (RedisEndpoint(path=unquote(parts.path), db=_db(options.get("db") or "0"),
                              username=username, password=password),)
    if sentinel:
        if not path:
            raise ValueError("redis url: redis+sentinel:// needs the master's service name")
        if len(path) > 2:
            raise ValueError("redis url: redis+sentinel:// takes /service_name[/db]")
        master = RedisEndpoint(db=_db(options.get("db") or (path[1] if len(path) > 1 else "0")),
                               tls=tls, username=username, password=password)
        watchers = RedisEndpoint(tls=tls, username=options.get("sentinel_username"),
                                 password=options.get("sentinel_password"))
        return SentinelTarget(tuple(watchers.at(host, port)
                                    for host, port in _hosts(netloc, SENTINEL_PORT)),
                              path[0], master)
    if len(path) > 1:
        raise ValueError("redis url: the path is the database number")
    node = RedisEndpoint(db=_db(options.get("db") or (path[0] if path else "0")), tls=tls,
                         username=username, password=password)
    return tuple(node.at(host, port) for host, port in _hosts(netloc, 6379))


def _db(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("redis url: the database must be a number") from None


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """`host[:port]` pairs, comma-separated (IPv6 in brackets); an empty netloc is
    localhost."""
    out = []
    for item in netloc.split(",") if netloc else ["localhost"]:
        if item.startswith("["):  # [v6] or [v6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else rest
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError("redis url: cannot parse it") from None
        if not 0 < port < 65536 or not host:
            raise ValueError("redis url: cannot parse it")
        out.append((unquote(host).lower(), port))
    return out


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """Verified TLS by default, as redis-py: certificate and hostname."""
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError("redis url: ssl_cert_reqs must be none, optional or required")
    try:
        context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    except OSError:  # ssl.SSLError too
        raise ValueError("redis url: cannot read the ssl_ca_certs file") from None
    context.check_hostname = reqs != "none" and options.get(
        "ssl_check_hostname", "true").lower() in ("1", "true", "yes", "on")
    context.verify_mode = _CERT_REQS[reqs]
    if "ssl_certfile" in options:  # a client certificate (mutual TLS)
        try:
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
        except OSError:
            raise ValueError("redis url: cannot read the ssl_certfile / ssl_keyfile") from None
    return context


async def connect(target: RedisEndpoint, protocol: asyncio.Protocol) -> None:
    """Open a connection to `target` (TCP, TLS or a unix socket) for `protocol`."""
    loop = asyncio.get_running_loop()
    if target.path is not None:
        await loop.create_unix_connection(lambda: protocol, target.path)
    else:
        await loop.create_connection(lambda: protocol, target.host, target.port,
                                     ssl=target.tls,
                                     server_hostname=target.host if target.tls else None)
