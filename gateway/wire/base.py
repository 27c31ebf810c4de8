"""The wire layers' interfaces: all the rest of the gateway may assume of the upstream
HTTP client and of the Redis connection. (The HTTP server's interface is ASGI, plus the
`turnout.on_disconnect` extension in `gateway/http/asgi.py`.)

Like httpx's cut between client and transport, callers type against these Protocols, so
a test can hand the dispatcher or the store a fake that answers without sockets
(`tests/support/fake_wire.py`), and the implementations can be swapped (ours in
`http_client.py` and `resp.py`; a cluster-aware Redis connection; a measured one).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.canonical import UpstreamFailure, UpstreamRequest

# -- HTTP, to upstreams -------------------------------------------------------------------


class HttpResponse(Protocol):
    """An upstream's answer: status and headers at once, the body as it arrives.
    `release()` or `close()` must end it."""

    status: int
    headers: dict[str, str]  # names lower-cased; repeats joined with ", "

    async def read(self, deadline: float | None = None) -> bytes:
        """The whole (rest of the) body; TimeoutError if not in by `deadline`."""
        ...

    async def readline(self, deadline: float | None = None) -> bytes:
        """The next line with its b"\\n", the unterminated rest at the end, b"" after."""
        ...

    def release(self) -> None:
        """Done: the connection is kept when the body was read whole, else dropped."""
        ...

    def close(self) -> None:
        """Drop the connection: an upstream still generating sees the request end."""
        ...


class HttpClient(Protocol):
    """Sends upstream requests. Deadlines are on `loop`'s clock; failures to connect or
    to understand the upstream raise `UpstreamFailure`, a missed deadline TimeoutError."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    async def send(self, req: UpstreamRequest, deadline: float | None = None
                   ) -> HttpResponse: ...

    async def close(self) -> None: ...


async def get(client: HttpClient, url: str, timeout_s: float) -> tuple[int, bytes] | None:
    """GET `url` (probes, scrapes): status and body, or None when not had in time."""
    deadline = client.loop.time() + timeout_s
    try:
        resp = await client.send(UpstreamRequest("GET", url, {}, b""), deadline)
        try:
            return resp.status, await resp.read(deadline)
        finally:
            resp.release()
    except (TimeoutError, UpstreamFailure):
        return None


async def post_json(client: HttpClient, url: str, body: bytes, timeout_s: float
                    ) -> tuple[int, bytes] | None:
    """POST a JSON body (a pool's admin calls): status and body, or None when not had in
    time."""
    deadline = client.loop.time() + timeout_s
    request = UpstreamRequest("POST", url, {"content-type": "application/json"}, body)
    try:
        resp = await client.send(request, deadline)
        try:
            return resp.status, await resp.read(deadline)
        finally:
            resp.release()
    except (TimeoutError, UpstreamFailure):
        return None


async def get_status(client: HttpClient, url: str, timeout_s: float) -> int | None:
    got = await get(client, url, timeout_s)
    return None if got is None else got[0]


# -- Redis ------------------------------------------------------------------------------

Arg = bytes | str | int | float
Keys = tuple[str, ...]


class StableKeys(tuple[str, ...]):
    """A script's keys that many calls use again (a team's ledger keys): a connection may
    encode them once and keep the encoding."""

    __slots__ = ()


@dataclass(frozen=True, eq=False)
class Script:
    """A Lua script, run by its SHA1 (loaded when the server does not have it)."""

    name: str  # for metrics and logs
    source: bytes
    sha: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(
            self.source, usedforsecurity=False).hexdigest().encode())


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One EVALSHA inside `execute_many`."""

    script: Script
    keys: Keys
    args: Sequence[Arg]


Command = tuple[Arg, ...] | ScriptCall


class Subscription(Protocol):
    """A pub/sub subscription kept open on a connection of its own."""

    live: bool  # subscribed now (messages may be missed while not)

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class RedisConnection(Protocol):
    """Commands to Redis. Errors: `StoreUnavailable` when it cannot be reached in time
    (callers apply their outage policy), `RespError` when a command itself is wrong."""

    async def execute(self, *args: Arg) -> Any:
        """One command; its reply (bytes, int, None or a list of them)."""
        ...

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        """A script by its SHA. `once`: never resent after a lost connection (it may
        have run), for a script that must not run twice."""
        ...

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one round trip; their replies in order (each atomic on
        its own). The first error reply raises, after all are answered."""
        ...

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Subscription:
        """A subscription to `channel` (not started). `on_down`: messages may be missed
        from now on; `on_up`: subscribed (first, or again after being down)."""
        ...

    async def close(self) -> None: ...
