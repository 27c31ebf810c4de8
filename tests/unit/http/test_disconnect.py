"""`cancel_on_disconnect` both ways: told by our server's extension, or, under another
ASGI server, by watching `receive()` for `http.disconnect`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.http.asgi import ON_DISCONNECT, cancel_on_disconnect


async def _work(started: asyncio.Event, cancelled: list[bool]) -> None:
    started.set()
    try:
        await asyncio.Event().wait()  # until cancelled
    except asyncio.CancelledError:
        cancelled.append(True)
        raise


async def test_our_servers_extension_cancels_the_work() -> None:
    hooks: list[Callable[[], None] | None] = []
    scope: dict[str, Any] = {"extensions": {ON_DISCONNECT: hooks.append}}

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read: the server says when the client leaves")

    started, cancelled = asyncio.Event(), []
    loop = asyncio.get_running_loop()
    task = loop.create_task(cancel_on_disconnect(scope, receive, _work(started, cancelled),
                                                 loop))
    await started.wait()
    left = hooks[-1]
    assert left is not None
    left()  # the client went away
    await asyncio.wait_for(task, 5)  # returns quietly: our own cancellation is swallowed
    assert cancelled == [True]
    assert hooks[-1] is None  # unhooked once the work ended


async def test_other_servers_the_watcher_reads_the_disconnect() -> None:
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    started, cancelled = asyncio.Event(), []
    loop = asyncio.get_running_loop()
    task = loop.create_task(cancel_on_disconnect({}, receive, _work(started, cancelled), loop))
    await started.wait()
    gone.set()
    await asyncio.wait_for(task, 5)
    assert cancelled == [True]


async def test_a_cancellation_from_elsewhere_still_propagates() -> None:
    hooks: list[Callable[[], None] | None] = []
    started, cancelled = asyncio.Event(), []
    loop = asyncio.get_running_loop()

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    task = loop.create_task(cancel_on_disconnect(
        {"extensions": {ON_DISCONNECT: hooks.append}}, receive, _work(started, cancelled), loop))
    await started.wait()
    task.cancel()  # the server shutting down, say: not the client leaving
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancellation was swallowed")
    assert cancelled == [True]
