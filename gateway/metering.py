"""Metering: what one request used and cost, settled into the store after it finishes.

Every admitted request gets a `Ticket`; the surface fills in its outcome and calls
`Meter.settle` exactly once (in a `finally`). Settlement runs as a task tracked until
shutdown, so it never delays the response. When the store is unreachable the settlement
is buffered in memory, in order, and a flusher retries until the store is back: no usage
event is lost while the process lives. A settlement retried after an ambiguous failure
(a timeout after Redis ran the script) can be recorded twice; events carry the request
id, so exports can de-duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.canonical import CanonicalRequest, Deployment, Usage
from gateway.store import SettleArgs, Store, StoreUnavailable
from policies.budgets import to_usd
from policies.keys import Principal
from policies.pricing import cost_nanos, text_tokens

if TYPE_CHECKING:  # the cache meters its hits through the ticket; no import cycle at run time
    from gateway.cache import CacheTicket

log = logging.getLogger("turnout.metering")

_RETRY_S = 0.25
_MAX_BATCH = 256  # settlements per round trip


@dataclass(slots=True)
class Ticket:
    """One admitted request: what was reserved for it, then what actually happened."""

    principal: Principal
    req: CanonicalRequest
    prompt_estimate: int
    max_output: int  # the most it may generate (its max_tokens, else the default)
    reserved_tokens: int  # on the store's TPM limiters (0 when not admitted by the store)
    headers: list[tuple[bytes, bytes]]  # x-ratelimit-* for every response
    reservation: str = ""  # the budget reservation it was admitted under: its own, a lease's
    reserved_nanos: int = 0  # its part of that reservation
    started: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)
    # Outcome, filled in by the surface.
    status: int = 0  # left at 0 when the client went away first: recorded as 499
    deployment: Deployment | None = None
    usage: Usage | None = None
    body: bytes | None = None  # a non-streamed answer (counted only if usage is missing)
    streamed_chars: int = 0  # text relayed so far, counted as it passes
    first_byte: float | None = None
    cache_hit: bool = False
    retries: int = 0
    cache: CacheTicket | None = None  # its way through the response cache, when cached
    saved_tokens: int = 0  # a cache hit: the tokens and cost its answer took to generate
    saved_cost_nanos: int = 0
    upstream_s: float = 0.0  # spent in dispatch until the answer or first chunk (telemetry)
    trace: Any = None  # its `gateway.telemetry.tracing.RequestTrace` while tracing is on


_TEXT_FIELDS = (b'"content":', b'"text":', b'"arguments":')


def text_chars(data: bytes) -> int:
    """Characters of generated text in one serialized chunk: a scan, not a JSON parse,
    because it runs on every streamed chunk (escapes count as one or two: close enough)."""
    n = 0
    for marker in _TEXT_FIELDS:
        i = data.find(marker)
        while i >= 0:
            start = i + len(marker)
            if data[start:start + 1] == b" ":
                start += 1
            if data[start:start + 1] != b'"':
                i = data.find(marker, start)
                continue
            start += 1
            end = data.find(b'"', start)
            while end > 0 and data[end - 1] == 0x5C:  # an escaped quote
                end = data.find(b'"', end + 1)
            if end < 0:
                break
            n += end - start
            i = data.find(marker, end)
    return n


def _body_chars(body: bytes) -> int:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    total = 0
    for choice in obj.get("choices") or ():
        message = choice.get("message") or {}
        for text in (message.get("content"), choice.get("text")):
            if isinstance(text, str):
                total += len(text)
    return total


def measured(ticket: Ticket) -> tuple[Usage, bool]:
    """(usage, estimated): the upstream's report, else our count of what passed."""
    if ticket.usage is not None:
        return ticket.usage, False
    if ticket.first_byte is None and ticket.status != 200:
        return Usage(), False  # failed before any output: nothing was generated
    chars = ticket.streamed_chars or (_body_chars(ticket.body) if ticket.body else 0)
    return Usage(ticket.prompt_estimate, text_tokens(chars)), True


def settlement(t: Ticket, now: float | None = None) -> SettleArgs:
    now = time.monotonic() if now is None else now
    t.status = t.status or 499
    usage, estimated = measured(t)
    cost = cost_nanos(t.deployment, usage) if t.deployment is not None else 0
    p = t.principal
    latency = now - t.started
    event = {
        "request_id": t.req.request_id, "time": round(t.wall, 3), "team": p.team,
        "key_id": p.key_id, "model": t.req.model, "operation": t.req.operation,
        "deployment": t.deployment.id if t.deployment else None, "stream": t.req.stream,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens, "total_tokens": usage.total_tokens,
        "cost_usd": to_usd(cost), "latency_ms": round(latency * 1000, 2),
        "ttft_ms": round(((t.first_byte or now) - t.started) * 1000, 2),
        "status": t.status, "cache_hit": t.cache_hit, "retries": t.retries,
        "estimated": estimated, "saved_tokens": t.saved_tokens,
        "saved_cost_usd": to_usd(t.saved_cost_nanos),
    }
    reserved = t.reserved_tokens > 0
    return SettleArgs(
        team=p.team, key_id=p.key_id, reservation=t.reservation or t.req.request_id,
        reserved_nanos=t.reserved_nanos,
        token_delta=usage.total_tokens - t.reserved_tokens if reserved else 0,
        key_tpm=p.key_limits.tpm if reserved else 0,
        team_tpm=p.team_limits.tpm if reserved else 0,
        cost_nanos=cost,
        team_period=p.team_budget.period if p.team_budget else "monthly",
        key_period=p.key_budget.period if p.key_budget else "monthly",
        model=t.req.model, prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
        cache_hit=t.cache_hit, error=t.status >= 400, estimated=estimated,
        event=orjson.dumps(event), saved_tokens=t.saved_tokens,
        saved_cost_nanos=t.saved_cost_nanos)


class Meter:
    """Settles tickets in order, in batches, from one background flusher.

    `settle` only queues (no task or round trip per request); the flusher sends
    whatever queued meanwhile as one batch (one pipelined round trip for Redis), so the
    batch size follows the load. While the store is down the queue waits and is retried:
    no usage event is lost while the process lives.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: deque[SettleArgs] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outage = False
        # Told of every settlement as it is made (metrics, access log, trace end): the one
        # point every admitted request passes exactly once. It must not raise.
        self.observer: Callable[[Ticket, SettleArgs], None] | None = None

    def settle(self, ticket: Ticket) -> None:
        args = settlement(ticket)
        if self.observer is not None:
            self.observer(ticket, args)
        self._queue.append(args)
        if self._flusher is None or self._flusher.done():
            if self._loop is None:  # asked for once: a getpid() call each on Python 3.11
                self._loop = asyncio.get_running_loop()
            self._flusher = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue[i] for i in range(min(len(queue), _MAX_BATCH))]
            try:
                await self.store.settle_many(batch)
            except StoreUnavailable as err:
                if not self._outage:
                    log.warning("store unavailable, buffering usage events (%s)", err)
                    self._outage = True
                await asyncio.sleep(_RETRY_S)
                continue
            except Exception:  # a bug of ours: retrying cannot help, keep the events in the log
                log.exception("settlement failed; usage events: %s",
                              b", ".join(a.event for a in batch).decode())
            for _ in batch:
                queue.popleft()
            if self._outage:
                log.info("store is back: buffered usage events flushed")
                self._outage = False

    async def close(self, timeout_s: float = 5.0) -> None:
        """Wait for pending settlements; whatever the store still cannot take is logged."""
        if self._flusher is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._flusher
            except TimeoutError:
                self._flusher.cancel()
        for args in self._queue:
            log.error("usage event not recorded (store unavailable at shutdown): %s",
                      args.event.decode())
