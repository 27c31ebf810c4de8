"""A lean asyncio RESP2 client: what the Redis store needs, at a fraction of redis-py's CPU.

Profiling showed redis-py's command packing, argument encoder, script wrapper, pool
checkout and reply reading costing about a fifth of the gateway's CPU per request. This
client does only what the store needs, and does it cheaply:

- One multiplexed connection, automatically pipelined: a command is queued on it at once
  and everything queued in a loop tick goes out in one write; replies come back in order
  (FIFO) and each resolves its caller's future. No pool, no checkout, no lock.
- Replies are parsed by hiredis; commands are encoded here, with the parts that never
  change (an EVALSHA's header, SHA and key count; small integers) encoded once.
- Scripts run by EVALSHA with the SHA1 computed here; a NOSCRIPT reply (Redis restarted,
  or SCRIPT FLUSH) loads the script and retries once.
- A command with no reply within `timeout_s` fails with StoreUnavailable. Replies are
  matched by order, so the connection is then closed and everything pending on it fails:
  a late reply must never be taken for the next command's. One timer per connection
  watches the oldest pending command, instead of one timer per command.
- A lost connection fails everything pending on it; each such command is retried once on
  a fresh connection (a stale connection after a restart, a CLIENT KILL), then the outage
  surfaces at once as StoreUnavailable so the callers' outage policy can act. A retried
  command may have run before the connection dropped: at least once, as with redis-py
  (a script that must not run twice is sent `once`).

StoreUnavailable messages may reach API clients (a 503's body) and logs: they name what
went wrong, never the server's address, and never a password.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from gateway.store.base import StoreUnavailable

Arg = bytes | str | int | float
ReplyError = hiredis.ReplyError  # an error reply, as hiredis hands it over (not raised)


class RespError(Exception):
    """An error reply that means the command itself is wrong (a bug, or bad data)."""

    @property
    def code(self) -> str:
        """The error's first word: ERR, WRONGTYPE, NOSCRIPT, ..."""
        return str(self).partition(" ")[0]


class NoScriptError(RespError):
    """EVALSHA of a script the server does not have (restarted, or SCRIPT FLUSH)."""


class _ConnectionLost(StoreUnavailable):
    """The connection went away with the command unanswered: worth one retry."""


class _NotSent(_ConnectionLost):
    """The connection was gone before the command went out: it certainly did not run."""


# Error replies meaning "Redis cannot serve right now" rather than "this command is wrong":
# the callers' outage policy handles them like a dropped connection (redis-py raised
# connection errors for the loading and authentication ones).
_OUTAGE_CODES = frozenset({"LOADING", "BUSY", "MASTERDOWN", "READONLY", "NOAUTH", "WRONGPASS"})


def reply_error(reply: ReplyError) -> Exception:
    """The exception for an error reply."""
    message = str(reply)
    code = message.partition(" ")[0]
    if code in _OUTAGE_CODES or message.startswith("ERR max number of clients"):
        return StoreUnavailable(f"redis unavailable ({code})")
    if code == "NOSCRIPT":
        return NoScriptError(message)
    return RespError(message)


# --- Encoding -----------------------------------------------------------------------------

# Small integers (key counts, flags, limits) come up in every call: encoded once.
_SMALL_INTS = tuple(b"$%d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(1024))


def _bulks(args: Sequence[Any]) -> bytes:
    """Each argument as a RESP bulk string, concatenated. The hot path: exact type checks,
    the common types first."""
    out = []
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            if 0 <= arg < 1024:
                out.append(_SMALL_INTS[arg])
                continue
            data = b"%d" % arg
        else:
            data = _other(arg)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _other(arg: object) -> bytes:
    """The rare argument types, off the fast path: floats, int subclasses, buffers."""
    if isinstance(arg, float):
        return repr(arg).encode()  # repr round-trips exactly, as Redis parses it
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode()
    raise TypeError(f"cannot send a {type(arg).__name__} to redis")


def encode(args: Sequence[Arg]) -> bytes:
    """One command: a RESP array of bulk strings."""
    return b"*%d\r\n" % len(args) + _bulks(args)


class Encoded(NamedTuple):
    """Arguments encoded ahead of time, to be reused by many commands (a script's keys)."""

    n: int  # how many arguments
    data: bytes


def encode_args(args: Sequence[Arg]) -> Encoded:
    return Encoded(len(args), _bulks(args))


class Script:
    """A Lua script run by EVALSHA: its SHA1 computed here, loaded on a NOSCRIPT reply."""

    __slots__ = ("_heads", "sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()
        self._heads: dict[tuple[int, int], bytes] = {}

    def command(self, keys: Sequence[Arg] | Encoded, args: Sequence[Arg]) -> bytes:
        """The EVALSHA command for these keys (maybe encoded already) and arguments."""
        if type(keys) is not Encoded:
            keys = encode_args(keys)
        shape = (keys.n, len(args))
        head = self._heads.get(shape)
        if head is None:  # the array header, EVALSHA, the SHA, numkeys: fixed per shape
            head = self._heads[shape] = b"*%d\r\n" % (3 + keys.n + len(args)) + _bulks(
                (b"EVALSHA", self.sha, keys.n))
        return head + keys.data + _bulks(args)


# --- Where to connect ---------------------------------------------------------------------

_QUERY_OPTIONS = frozenset({"db", "username", "password", "ssl_cert_reqs", "ssl_ca_certs",
                            "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"})
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class Target:
    """A parsed Redis URL. The credentials stay out of repr (and so out of logs)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    db: int = 0
    tls: ssl.SSLContext | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def handshake(self) -> list[bytes]:
        """The commands that open every connection: AUTH, SELECT."""
        commands = []
        if self.username:  # ACL user
            commands.append(encode((b"AUTH", self.username, self.password or "")))
        elif self.password:
            commands.append(encode((b"AUTH", self.password)))
        if self.db:
            commands.append(encode((b"SELECT", self.db)))
        return commands

    def scrub(self, text: str) -> str:
        """`text` with the password masked: for anything that may reach a log."""
        return text.replace(self.password, "***") if self.password else text


def parse_url(url: str) -> Target:
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
        return Target(path=unquote(parts.path), db=db, username=username, password=password)
    tls = _tls_context(options) if parts.scheme == "rediss" else None
    return Target(host=unquote(parts.hostname or "localhost"), port=port, db=db, tls=tls,
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


# --- One connection -----------------------------------------------------------------------

_MORE = object()  # hiredis: no complete reply buffered yet (None is a reply: a nil)


class _Connection(asyncio.Protocol):
    """One socket. Commands are answered in the order they were sent, so each reply
    resolves the oldest pending future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout = timeout_s
        self._reader = hiredis.Reader(notEnoughData=_MORE)
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()  # (future, deadline)
        self._out: list[bytes] = []  # queued this tick, written by _flush
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False  # for good: the next command opens a new connection

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue an encoded command; the future gets its reply (error replies included,
        as hiredis.ReplyError values) or fails with StoreUnavailable."""
        loop = self._loop
        future = loop.create_future()
        if self.closed:  # lost between being picked and used: the caller retries
            future.set_exception(_NotSent("redis unavailable (connection lost)"))
            return future
        deadline = loop.time() + self._timeout
        self._pending.append((future, deadline))
        if not self._out:  # the first this tick: one write for all of them
            loop.call_soon(self._flush)
        self._out.append(command)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline)
        return future

    def send_many(self, commands: Sequence[bytes]) -> list[asyncio.Future[Any]]:
        return [self.send(command) for command in commands]

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not self.closed and self._transport is not None and out:
            self._transport.writelines(out)

    def _check_deadline(self) -> None:
        """The one timer: fail everything if the oldest command is overdue, else sleep
        until it would be. Commands are sent in order, so the oldest is due first."""
        self._timer = None
        if not self._pending:
            return  # the next command re-arms it
        deadline = self._pending[0][1]
        if deadline - self._loop.time() <= 0.001:  # timers may fire a hair early
            self.close(StoreUnavailable(f"redis unavailable (no reply in {self._timeout:g}s)"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def close(self, reason: StoreUnavailable) -> None:
        """Close for good and fail every pending command with `reason`'s kind and message:
        once one reply is missing, none that follow can be matched to their command."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
        pending, self._pending = self._pending, deque()
        for future, _ in pending:
            if not future.done():  # a cancelled caller's is done already
                future.set_exception(type(reason)(*reason.args))  # one each: tracebacks

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        try:
            reply = reader.gets()
            while reply is not _MORE:
                future = pending.popleft()[0]
                if not future.done():
                    future.set_result(reply)
                reply = reader.gets()
        except (hiredis.ProtocolError, IndexError):  # garbage, or a reply nobody asked for
            self.close(StoreUnavailable("redis unavailable (protocol error)"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.close(_ConnectionLost("redis unavailable (connection lost)"))


# --- The client ---------------------------------------------------------------------------


class RespClient:
    """Redis over one pipelined connection, opened on first use and after a loss. Use it
    from one event loop (its connection and futures belong to the loop that opened it)."""

    def __init__(self, url: str, *, timeout_s: float = 1.0) -> None:
        self._target = parse_url(url)
        self._handshake = self._target.handshake()
        self._timeout = timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    def __repr__(self) -> str:
        return f"RespClient({self._target!r})"

    async def execute(self, *args: Arg) -> Any:
        """Run one command; its reply (bytes, int, None or a list of them)."""
        return _checked(await self._send(encode(args)))

    async def evalsha(self, script: Script, keys: Sequence[Arg] | Encoded,
                      args: Sequence[Arg], *, once: bool = False) -> Any:
        """Run a script by its SHA, loading it when the server does not have it. `once`:
        never resent after a lost connection (it may have run): for a script that must
        not run twice, whose caller handles StoreUnavailable as "maybe it ran"."""
        command = script.command(keys, args)
        reply = await self._send(command, retry=not once)
        if _is_noscript(reply):  # it did not run
            await self._load(script)
            reply = await self._send(command, retry=not once)
        return _checked(reply)

    async def execute_many(self, commands: Sequence[bytes],
                           script: Script | None = None) -> list[Any]:
        """Several encoded commands (see `encode`, `Script.command`) in one write; their
        replies, in order. `script`: the one their EVALSHAs run, loaded on NOSCRIPT and
        those commands retried. The first error reply raises, after all are answered."""
        replies = await self._send_many(commands)
        missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
        if script is not None and missing:
            await self._load(script)
            again = await self._send_many([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return [_checked(reply) for reply in replies]

    async def close(self) -> None:
        if self._connecting is not None:  # bounded by the timeout; then closed below
            await asyncio.wait([self._connecting])
        if self._conn is not None:
            self._conn.close(StoreUnavailable("redis unavailable (client closed)"))
            self._conn = None

    async def _load(self, script: Script) -> None:
        sha = _checked(await self._send(encode((b"SCRIPT", b"LOAD", script.source))))
        if sha != script.sha:  # our SHA1 would never match: every call would reload
            raise RespError(f"SCRIPT LOAD returned {sha!r}, expected {script.sha!r}")

    async def _send(self, command: bytes, *, retry: bool = True) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        try:
            return await conn.send(command)
        except _ConnectionLost as lost:
            if not retry and not isinstance(lost, _NotSent):
                raise
            # Most likely a stale connection (Redis restarted, or dropped us): one retry on
            # a fresh one, which fails at once when Redis is really gone.
            conn = await self._connect()
            return await conn.send(command)

    async def _send_many(self, commands: Sequence[bytes]) -> list[Any]:
        """The replies, with those lost with a connection retried once on a new one."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        replies = await _gather(conn.send_many(commands))
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, _ConnectionLost)]
        if lost:
            conn = await self._connect()
            again = await _gather(conn.send_many([commands[i] for i in lost]))
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, StoreUnavailable):  # (error replies are values here)
                raise reply
        return replies

    async def _connect(self) -> _Connection:
        """The open connection, or a new one: concurrent callers share one attempt."""
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._opened)
        # shield: a caller cancelled while waiting must not cancel the others' attempt
        return await asyncio.shield(task)

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone

    async def _open(self) -> _Connection:
        target, loop = self._target, asyncio.get_running_loop()
        conn = _Connection(loop, self._timeout)
        try:
            async with asyncio.timeout(self._timeout):
                await connect(target, conn)
                replies = await _gather(conn.send_many(self._handshake))
        except (OSError, TimeoutError) as err:  # ssl.SSLError is an OSError
            conn.close(StoreUnavailable("redis unavailable (closed)"))
            raise StoreUnavailable(f"redis unavailable ({_why(err)})") from None
        for reply in replies:
            if isinstance(reply, StoreUnavailable):  # lost, or no reply in time
                conn.close(reply)
                raise StoreUnavailable(*reply.args)
            if type(reply) is ReplyError:  # AUTH or SELECT refused
                conn.close(StoreUnavailable("redis unavailable (closed)"))
                raise StoreUnavailable(f"redis unavailable ({target.scrub(str(reply))})")
        self._conn = conn
        return conn


async def connect(target: Target, protocol: asyncio.Protocol) -> None:
    """Open a connection to `target` (TCP, TLS or a unix socket) for `protocol`."""
    loop = asyncio.get_running_loop()
    if target.path is not None:
        await loop.create_unix_connection(lambda: protocol, target.path)
    else:
        await loop.create_connection(lambda: protocol, target.host, target.port,
                                     ssl=target.tls,
                                     server_hostname=target.host if target.tls else None)


def _checked(reply: Any) -> Any:
    if type(reply) is ReplyError:
        raise reply_error(reply)
    return reply


def _is_noscript(reply: Any) -> bool:
    return type(reply) is ReplyError and str(reply).startswith("NOSCRIPT")


async def _gather(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """Every future's result or exception: each is retrieved, none is left unlogged."""
    out: list[Any] = []
    for future in futures:
        try:
            out.append(await future)
        except StoreUnavailable as err:
            out.append(err)
    return out


def _why(err: OSError) -> str:
    """A connect failure in a few words, without the address it was trying."""
    if isinstance(err, TimeoutError):
        return "connect timed out"
    if isinstance(err, ssl.SSLError):
        return f"TLS: {err.reason or 'handshake failed'}"
    if isinstance(err, socket.gaierror):
        return "cannot resolve the host"
    return os.strerror(err.errno).lower() if err.errno else "connect failed"
