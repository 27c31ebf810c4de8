"""Fakes of the wire layers' interfaces (gateway/wire/base.py), answering without sockets,
the way httpx's MockTransport stands in for a transport.

    client = FakeHttpClient(lambda req: FakeResponse(200, body=b'{...}'))
    runner = AttemptRunner(client, Scoreboard(), timeouts)

    redis = FakeRedis(lambda command: b"PONG")   # command: a tuple, or a ScriptCall
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from gateway.canonical import UpstreamRequest
from gateway.store import StoreUnavailable
from gateway.wire.base import Arg, Command, Keys, Script, ScriptCall


class FakeResponse:
    """A whole body, or SSE `lines` handed out one `readline` at a time."""

    def __init__(self, status: int = 200, *, body: bytes = b"",
                 lines: Sequence[bytes] = (), headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self._lines = list(lines) or ([body] if body else [])
        self.released = self.closed = False

    async def read(self, deadline: float | None = None) -> bytes:
        body, self._lines = b"".join(self._lines), []
        return body

    async def readline(self, deadline: float | None = None) -> bytes:
        return self._lines.pop(0) if self._lines else b""

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


Handler = Callable[[UpstreamRequest], FakeResponse | None]


class FakeHttpClient:
    """Answers each request with what `handler` makes of it (None: an upstream that never
    answers, so the deadline passes: TimeoutError, as from the real client); records what
    was sent."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.sent: list[UpstreamRequest] = []
        self.responses: list[FakeResponse] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def send(self, req: UpstreamRequest, deadline: float | None = None) -> FakeResponse:
        self.sent.append(req)
        resp = self._handler(req)
        if resp is None:
            assert deadline is not None, "a request with no deadline would wait forever"
            await asyncio.sleep(max(0.0, deadline - self.loop.time()))
            raise TimeoutError
        self.responses.append(resp)
        return resp

    async def close(self) -> None:
        return None


class FakeRedis:
    """A Redis connection whose replies come from `reply(command)`; `down` makes every
    call fail as an unreachable Redis does (StoreUnavailable)."""

    def __init__(self, reply: Callable[[Command], Any]) -> None:
        self._reply = reply
        self.down = False
        self.commands: list[Command] = []

    def _answer(self, command: Command) -> Any:
        if self.down:
            raise StoreUnavailable("redis unavailable (fake: down)")
        self.commands.append(command)
        return self._reply(command)

    async def execute(self, *args: Arg) -> Any:
        return self._answer(tuple(args))

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        return self._answer(ScriptCall(script, keys, args))

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        return [self._answer(c) for c in commands]

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Any:
        raise NotImplementedError("no pub/sub in the fake")

    async def close(self) -> None:
        return None
