"""The stream the client reads: one upstream stream, or several spliced into one when a
stream breaks and dispatch continues it elsewhere.

`chunks()` yields canonical chunks; `aclose()` must always be called (the response does
it in a `finally`), which releases the connection even if `chunks()` never ran. Closing
before the upstream finished drops the connection, which is how the upstream learns that
the client went away. Timeouts here: idle (gap between chunks) and total.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from gateway.canonical import Deployment, FailureKind, StreamChunk, UpstreamFailure, Usage
from gateway.dispatch.attempts import AttemptRecord, Segment
from gateway.dispatch.continuation import Splice


class Resumer(Protocol):
    async def resume(self, failure: UpstreamFailure, stream: UpstreamStream
                     ) -> tuple[Segment, Splice, AttemptRecord | None] | None:
        """A new segment continuing the stream (with its splice and its attempt's record),
        None when the answer was already complete; raises an UpstreamFailure (for the
        client) when it cannot be continued."""
        ...


class UpstreamStream:
    def __init__(self, segment: Segment, deadline: float, idle_s: float,
                 resumer: Resumer | None = None) -> None:
        self.deployment: Deployment = segment.attempt.deployment  # the one that answered first
        self.usage: Usage | None = None  # summed over every segment
        self.history: list[AttemptRecord] | None = None  # set once a second attempt was made
        self.record: AttemptRecord | None = None  # the current segment's, within `history`
        self.segment = segment
        # What the client got, kept (by reference) only when it could be continued.
        self.seen: list[bytes] | None = [] if resumer is not None else None
        self._resumer = resumer
        self._splice: Splice | None = None
        self._own_usage: Usage | None = None  # the current segment's own, once spliced
        self._pending = segment.first
        self._deadline = deadline
        self._idle = idle_s
        self._chunks = 0
        self._closed = False
        self._ok = False

    @property
    def attempts(self) -> list[AttemptRecord]:
        """Every upstream attempt with its usage (hedge losers, broken segments, then the
        one that finished), for metering what each really cost."""
        if self.history is None:
            return [AttemptRecord(self.deployment, "ok", self.usage)]
        return self.history

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        loop = asyncio.get_running_loop()
        while True:
            seg = self.segment
            try:
                for chunk in self._pending:
                    out = self._note(chunk)
                    if out is not None:
                        yield out
                self._pending = []
                while not seg.translator.finished:
                    for chunk in await seg.pull(min(loop.time() + self._idle, self._deadline)):
                        out = self._note(chunk)
                        if out is not None:
                            yield out
            except (TimeoutError, UpstreamFailure) as err:
                failure = err if isinstance(err, UpstreamFailure) else UpstreamFailure(
                    FailureKind.TIMEOUT, "timed out reading the response")
                seg.attempt.failed(failure)
                if self._resumer is None:
                    raise failure from None
                seg.resp.close()
                resumed = await self._resumer.resume(failure, self)
                if resumed is None:
                    return
                self.segment, self._splice, self.record = resumed
                self._pending = self.segment.first
                self._chunks = 0
                continue
            self._ok = True
            seg.attempt.succeeded(self._chunks)
            if self.record is not None:
                self.record.usage = self._own_usage if self._splice else self.usage
            return

    def _note(self, chunk: StreamChunk) -> StreamChunk | None:
        self._chunks += 1
        if self._splice is not None:
            spliced = self._splice.rewrite(chunk)
            if spliced is None:
                return None
            if chunk.usage is not None:
                self._own_usage = chunk.usage
            chunk = spliced
        if chunk.usage is not None:
            self.usage = chunk.usage
        if self.seen is not None and chunk.data:
            self.seen.append(chunk.data)
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        seg = self.segment
        if self._ok:
            seg.resp.release()
        else:
            seg.resp.close()  # drop the connection: the upstream sees the request end
            seg.attempt.failed(asyncio.CancelledError())
