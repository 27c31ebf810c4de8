"""Where a Redis connection goes: a `redis.url` parsed once (config checks it the same way,
without opening anything), and the socket opened for a protocol.

The forms redis-py took; errors never quote the URL, which may hold a password.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

_QUERY_OPTIONS = frozenset({"db", "username", "password", "ssl_cert_reqs", "ssl_ca_certs",
                            "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"})
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "required": ssl.CERT_REQUIRED}


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


def parse_url(url: str) -> RedisEndpoint:
    """The forms redis-py took: redis://[[user]:password@]host[:port][/db], rediss://…
    (TLS), unix://[[user]:password@]/path/to.sock; query options db, username, password
    and ssl_cert_reqs / ssl_ca_certs / ssl_certfile / ssl_keyfile / ssl_check_hostname.
    Errors never quote the URL: it may hold a password."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
        options = {name: values[0] for name, values in parse_qs(parts.query).items()}
    except ValueError:
        raise ValueError("redis url: cannot parse it") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("redis url: must start with redis://, rediss:// or unix://")
    unknown = options.keys() - _QUERY_OPTIONS
    if unknown:
        raise ValueError(f"redis url: unsupported options {sorted(unknown)}")
    username = unquote(parts.username) if parts.username else options.get("username")
    password = unquote(parts.password) if parts.password else options.get("password")
    unix = parts.scheme == "unix"
    db_text = options.get("db") or ("" if unix else unquote(parts.path).strip("/")) or "0"
    try:
        db = int(db_text)
    except ValueError:
        raise ValueError("redis url: the database must be a number") from None
    if unix:
        if not parts.path:
            raise ValueError("redis url: unix:// needs a socket path")
        return RedisEndpoint(path=unquote(parts.path), db=db, username=username, password=password)
    tls = _tls_context(options) if parts.scheme == "rediss" else None
    return RedisEndpoint(host=unquote(parts.hostname or "localhost"), port=port, db=db, tls=tls,
                  username=username, password=password)


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """Verified TLS by default, as redis-py: certificate and hostname."""
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError("redis url: ssl_cert_reqs must be none, optional or required")
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    context.check_hostname = reqs != "none" and options.get(
        "ssl_check_hostname", "true").lower() in ("1", "true", "yes", "on")
    context.verify_mode = _CERT_REQS[reqs]
    if "ssl_certfile" in options:  # a client certificate (mutual TLS)
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
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
