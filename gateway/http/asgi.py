"""Small raw-ASGI helpers for the hot path: the request's id, read a bounded body, send a
response, cancel the work when the client goes away, and deployment names without
addresses."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gateway.errors import GatewayError
from gateway.ids import new_id

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"

def client_address(scope: Scope) -> str | None:
    """The peer's address (a proxy's, behind one): what authentication lockouts count."""
    client = scope.get("client")
    return str(client[0]) if client else None


def request_id(given: bytes | None) -> str:
    """The client's `x-request-id` when it is a sane one, else a new id."""
    if given and len(given) <= 128 and given.isascii():
        return given.decode()
    return new_id()


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class RequestBodyError(Exception):
    """Raised by `receive()` under our server (gateway/wire/server.py) when the request's
    body cannot be had: malformed framing (400) or not received in time (408). The
    connection closes after the response; `read_body` makes it the client's error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(receive: Receive, limit: int, declared: bytes | None) -> bytes:
    """The whole request body, refusing (413) anything over `limit` before buffering it
    (`declared`: the request's content-length header)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await body_message(receive)
        part = msg.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        chunks.append(part)
        if not msg.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def body_message(receive: Receive) -> Message:
    """The request body's next message: a body that cannot be had is the client's error
    (400 or 408); a client gone cancels the reader."""
    try:
        msg = await receive()
    except RequestBodyError as err:
        raise GatewayError(err.status, err.message, code="request_timeout"
                           if err.status == 408 else "invalid_request_body") from None
    if msg["type"] == "http.disconnect":
        raise asyncio.CancelledError
    return msg


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"request body is larger than the limit of {limit} bytes",
                        code="request_too_large")


async def send_response(
    send: Send, status: int, body: bytes, headers: Headers, content_type: bytes = JSON
) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})


WATCH_AFTER_S = 0.05
# An ASGI extension our server (gateway/wire/server.py) offers: scope["extensions"][it]
# is a function taking a callback (or None) to call when the client disconnects.
ON_DISCONNECT = "turnout.on_disconnect"


async def cancel_on_disconnect(scope: Scope, receive: Receive, work: Awaitable[None],
                               loop: asyncio.AbstractEventLoop) -> None:
    """Run `work` in this task; if the client disconnects first, cancel it.

    Cancelling unwinds the dispatch code, which drops the upstream connection: that is
    how the upstream learns to stop generating. Our server says when the client leaves
    (`ON_DISCONNECT`); under another, a watcher task reads `receive` for the disconnect
    (the request body must already have been read). It starts only once the work has run
    `WATCH_AFTER_S`: most requests finish sooner and then cost one timer, not a task.
    `loop`: the running loop (asking for it makes a system call on Python 3.11).
    """
    current = asyncio.current_task(loop)
    assert current is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    def left() -> None:
        nonlocal gone
        gone = True
        current.cancel()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        left()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    extensions = scope.get("extensions")
    hook = extensions.get(ON_DISCONNECT) if extensions else None
    if hook is not None:
        hook(left)
        timer = None
    else:
        timer = loop.call_later(WATCH_AFTER_S, start_watching)
    try:
        await work
    except asyncio.CancelledError:
        # Swallow only our own cancellation; one from the server must propagate.
        if gone and current.uncancel() == 0:
            return
        raise
    finally:
        if hook is not None:
            hook(None)
        if timer is not None:
            timer.cancel()
        if watcher is not None:
            watcher.cancel()


class PublicNames:
    """Deployment names without addresses (`server.deployment_header: name | off`): the
    x-turnout-deployment header gives only the provider or pool name (`name`) or is left
    out (`off`), and an error naming a pool replica (`gpu/10.0.0.5:8000`) names its pool.
    Wraps `send` only when configured: the default costs nothing."""

    def __init__(self, mode: str, pools: Iterable[str]) -> None:
        self.keep = mode == "name"
        names = sorted((re.escape(n.encode()) for n in pools), key=len, reverse=True)
        # A pool's name, a slash, the replica's address: up to a space, quote or comma.
        self._replica = (re.compile(rb"(?<![\w.-])(" + b"|".join(names) + rb")/[^\s\"',;]+")
                         if names else None)

    def _headers(self, headers: Headers) -> Headers:
        return [(n, v.partition(b"/")[0]) if n == b"x-turnout-deployment" else (n, v)
                for n, v in headers if self.keep or n != b"x-turnout-deployment"]

    def wrap(self, send: Send) -> Send:
        held: list[Message] = []  # an error's head, until its body has been rewritten
        replica = self._replica

        async def public(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._headers(message.get("headers", []))}
                if message["status"] >= 400 and replica is not None:
                    held.append(message)  # its body's length may change
                    return
            elif replica is not None and message["type"] == "http.response.body":
                body = message.get("body", b"")
                whole = held and not message.get("more_body")
                if whole or b"error" in body:  # an error answer, or a stream's error event
                    body = replica.sub(rb"\1", body)
                    message = {**message, "body": body}
                if held:
                    start = held.pop()
                    if whole:
                        start["headers"] = [(n, b"%d" % len(body) if n == b"content-length"
                                             else v) for n, v in start["headers"]]
                    await send(start)
            await send(message)

        return public
