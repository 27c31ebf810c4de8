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
import os
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis

from gateway.store.base import StoreUnavailable
from gateway.wire.base import Arg, Command, Keys, Script, ScriptCall, StableKeys
from gateway.wire.redis_url import RedisEndpoint, connect
from gateway.wire.resp_codec import Encoded, bulks, encode
from gateway.wire.resp_pubsub import Locate, Placed, Subscription
from gateway.wire.shared import Shared

ReplyError = hiredis.ReplyError  # an error reply, as hiredis hands it over (not raised)
_KEYS_CACHED = 10_000


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


class Unreached(StoreUnavailable):
    """No connection could be made: the command was certainly not sent (a cluster or
    sentinel client may look for the node elsewhere and send it there)."""


class NotMaster(StoreUnavailable):
    """READONLY: the node is a replica now (a failover demoted it); the write did not run."""


# Error replies meaning "Redis cannot serve right now" rather than "this command is wrong":
# the callers' outage policy handles them like a dropped connection (redis-py raised
# connection errors for the loading and authentication ones). CLUSTERDOWN: a cluster
# whose master of some slots is gone and not yet replaced; OOM: a full Redis (maxmemory
# with noeviction) refusing writes.
_OUTAGE_CODES = frozenset({"LOADING", "BUSY", "MASTERDOWN", "NOAUTH", "WRONGPASS",
                           "CLUSTERDOWN", "OOM"})


def reply_error(reply: ReplyError) -> Exception:
    """The exception for an error reply."""
    message = str(reply)
    code = message.partition(" ")[0]
    if code == "READONLY":
        return NotMaster("redis unavailable (READONLY)")
    if code in _OUTAGE_CODES or message.startswith("ERR max number of clients"):
        return StoreUnavailable(f"redis unavailable ({code})")
    if code == "NOSCRIPT":
        return NoScriptError(message)
    return RespError(message)


def _script_command(heads: dict[tuple[bytes, int, int], bytes], call: ScriptCall,
                    keys: Encoded) -> bytes:
    """The EVALSHA command: the array header, EVALSHA, the SHA and numkeys are fixed per
    script and shape, so encoded once (`heads`)."""
    shape = (call.script.sha, keys.n, len(call.args))
    head = heads.get(shape)
    if head is None:
        head = heads[shape] = b"*%d\r\n" % (3 + keys.n + len(call.args)) + bulks(
            (b"EVALSHA", call.script.sha, keys.n))
    return head + keys.data + bulks(call.args)


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
    from one event loop (its connection and futures belong to the loop that opened it).
    A subclass may choose where each new connection goes (`_target`) and check what it
    reached (`_verify`): Sentinel's master discovery (resp_sentinel.py)."""

    def __init__(self, endpoint: RedisEndpoint, *, timeout_s: float = 1.0) -> None:
        self._endpoint = endpoint
        self._handshake = [encode(c) for c in endpoint.handshake()]
        self._timeout = timeout_s
        self._conn: _Connection | None = None
        self._connecting = Shared(self._open)  # concurrent callers share one attempt
        self._keys: dict[Keys, Encoded] = {}  # scripts' keys, encoded once (bounded)
        self._heads: dict[tuple[bytes, int, int], bytes] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._endpoint!r})"

    @property
    def endpoint(self) -> RedisEndpoint:
        return self._endpoint

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def execute(self, *args: Arg) -> Any:
        return checked(await self._send(encode(args)))

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        """Loaded when the server does not have it. `once`: never resent after a lost
        connection (it may have run): for a script that must not run twice, whose caller
        handles StoreUnavailable as "maybe it ran"."""
        command = self._script_command(ScriptCall(script, keys, args))
        reply = await self._send(command, retry=not once)
        if _is_noscript(reply):  # it did not run
            await self._load(script)
            reply = await self._send(command, retry=not once)
        return checked(reply)

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """In one write. EVALSHAs the server has no script for are loaded and resent."""
        return [checked(reply) for reply in await self.send_raw(commands)]

    async def send_raw(self, commands: Sequence[Command], *, retry: bool = True) -> list[Any]:
        """`execute_many`'s replies unchecked: error replies are ReplyError values, for a
        caller that acts on some of them (a cluster's redirections). `retry`: resend what a
        lost connection left unanswered (False: only what certainly was not sent)."""
        encoded = [self._script_command(c) if isinstance(c, ScriptCall) else encode(c)
                   for c in commands]
        replies = await self._send_many(encoded, retry=retry)
        missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)
                   and isinstance(commands[i], ScriptCall)]  # (a raw EVALSHA: its error)
        if missing:
            for script in {cast(ScriptCall, commands[i]).script for i in missing}:
                await self._load(script)
            again = await self._send_many([encoded[i] for i in missing], retry=retry)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Subscription:
        return Subscription(*self.placement(channel), channel, on_message, on_down, on_up,
                            timeout_s=self._timeout)

    def placement(self, channel: str) -> tuple[Locate, Placed]:
        """Where a subscription to `channel` is made, and where it should be now."""
        return self._target, self._placed

    def _placed(self) -> RedisEndpoint | None:
        """Where a subscription should be now (None: wherever it is): a subscription
        follows a master that moved, so that PUBLISH counts it (resp_sentinel.py)."""
        return None

    def _script_command(self, call: ScriptCall) -> bytes:
        if type(call.keys) is not StableKeys:
            return _script_command(self._heads, call, Encoded(len(call.keys), bulks(call.keys)))
        keys = self._keys.get(call.keys)
        if keys is None:
            if len(self._keys) >= _KEYS_CACHED:
                self._keys.clear()  # rarely: cheaper than tracking recency
            keys = self._keys[call.keys] = Encoded(len(call.keys), bulks(call.keys))
        return _script_command(self._heads, call, keys)

    async def close(self) -> None:
        await self._connecting.settle()  # bounded by the timeout; then closed below
        if self._conn is not None:
            self._conn.close(StoreUnavailable("redis unavailable (client closed)"))
            self._conn = None

    async def _load(self, script: Script) -> None:
        sha = checked(await self._send(encode((b"SCRIPT", b"LOAD", script.source))))
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

    async def _send_many(self, commands: Sequence[bytes], *, retry: bool = True) -> list[Any]:
        """The replies, with those lost with a connection retried once on a new one (all
        of them with `retry`, else those certainly not sent)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        replies = await _gather(conn.send_many(commands))
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, _NotSent)
                or (retry and isinstance(reply, _ConnectionLost))]
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
        return await self._connecting.join()

    async def _target(self) -> RedisEndpoint:
        """Where the next connection goes."""
        return self._endpoint

    async def _verify(self, conn: _Connection) -> None:
        """Check what a new connection reached (after AUTH/SELECT); raise Unreached to
        refuse it. Nothing to check for a plain endpoint."""

    async def _open(self) -> _Connection:
        """A new connection, ready; Unreached when none could be made (nothing was sent)."""
        target = await self._target()
        conn = _Connection(asyncio.get_running_loop(), self._timeout)
        try:
            async with asyncio.timeout(self._timeout):
                await connect(target, conn)
                replies = await _gather(conn.send_many(self._handshake))
                for reply in replies:
                    if isinstance(reply, StoreUnavailable):  # lost, or no reply in time
                        raise Unreached(*reply.args)
                    if type(reply) is ReplyError:  # AUTH or SELECT refused
                        raise Unreached(f"redis unavailable ({target.scrub(str(reply))})")
                await self._verify(conn)
        except (OSError, TimeoutError) as err:  # ssl.SSLError is an OSError
            conn.close(StoreUnavailable("redis unavailable (closed)"))
            raise Unreached(f"redis unavailable ({_why(err)})") from None
        except Unreached:
            conn.close(StoreUnavailable("redis unavailable (closed)"))
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        """Close the connection: the next command opens a new one (wherever `_target`
        says then); commands pending on it are resent there once, as after a loss."""
        if self._conn is not None:
            self._conn.close(_ConnectionLost("redis unavailable (connection dropped)"))


def checked(reply: Any) -> Any:
    """A reply's value; an error reply raised (as `reply_error` says)."""
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
