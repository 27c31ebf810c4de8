"""Metering: what one request used and cost, settled into the store after it finishes.

Every admitted request has its `RequestContext` (what admission decided, immutable) and
its `Outcome` (what happened, filled in as it is answered); the pipeline calls
`Meter.settle` with both exactly once (in a `finally`). Settlement runs in the
background, so it never delays the response. When the store is unreachable the settlement
is buffered in memory, in order, and a flusher retries until the store is back: no usage
event is lost while the process lives. A settlement sent again after an ambiguous
failure (a timeout after Redis ran the script) is recognised by its id and applied once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import orjson

from gateway.canonical import CanonicalRequest, Deployment, Usage
from gateway.store import Release, SettleArgs, Store, StoreUnavailable
from policies.budgets import to_usd
from policies.keys import Principal
from policies.pricing import cost_nanos, text_tokens

log = logging.getLogger("turnout.metering")

_RETRY_S = 0.25
_MAX_BATCH = 256  # settlements per round trip


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One admitted request as admission left it: who, what, and what was reserved.
    Immutable from admission on; what happens to the request goes in its `Outcome`."""

    principal: Principal
    req: CanonicalRequest
    admission_id: str  # unique: its settlement's id, and its own reservation's
    prompt_estimate: int
    max_output: int  # the most it may generate (its max_tokens, else the default)
    reserved_tokens: int  # on the store's TPM limiters (0 when not admitted by the store)
    ratelimit_headers: tuple[tuple[bytes, bytes], ...]  # x-ratelimit-*, for every response
    reservation: str = ""  # the budget reservation it was admitted under: its own, a lease's
    reserved_nanos: int = 0  # its part of that reservation (ALL: whatever its own holds)
    from_lease: bool = False  # admitted from this process's lease, no store round trip
    # What its cost is multiplied by: below 1 for the batch lane's discount (its admission
    # stage sets it, gateway/batch/lane_pipeline.py); the reservation stays at list price.
    price_factor: float = 1.0


@dataclass(slots=True)
class Outcome:
    """What happened to one admitted request, filled in by the pipeline as it answers;
    settlement reads it once."""

    started: float  # arrival (monotonic): latency counts from here, auth and parsing included
    wall: float = field(default_factory=time.time)
    status: int = 0  # left at 0 when the client went away first: recorded as 499
    deployment: Deployment | None = None
    usage: Usage | None = None
    body: bytes | None = None  # a non-streamed answer (counted only if usage is missing)
    streamed_chars: int = 0  # text relayed so far, counted as it passes
    first_byte: float | None = None
    retries: int = 0
    upstream_s: float = 0.0  # spent in dispatch until the answer or first chunk (telemetry)
    cache: bytes | None = None  # the response cache's verdict (hit, miss, bypass); None: off
    saved_tokens: int = 0  # a cache hit: the tokens and cost its answer took to generate
    saved_cost_nanos: int = 0

    @property
    def cache_hit(self) -> bool:
        return self.cache == b"hit"  # (gateway.cache.HIT: the cache imports this module)


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


def measured(ctx: RequestContext, out: Outcome) -> tuple[Usage, bool]:
    """(usage, estimated): the upstream's report, else our count of what passed."""
    if out.usage is not None:
        return out.usage, False
    if out.first_byte is None and out.status != 200:
        return Usage(), False  # failed before any output: nothing was generated
    chars = out.streamed_chars or (_body_chars(out.body) if out.body else 0)
    return Usage(ctx.prompt_estimate, text_tokens(chars)), True


def settlement(ctx: RequestContext, out: Outcome, now: float | None = None) -> SettleArgs:
    now = time.monotonic() if now is None else now
    out.status = out.status or 499
    usage, estimated = measured(ctx, out)
    cost = cost_nanos(out.deployment, usage) if out.deployment is not None else 0
    if ctx.price_factor != 1.0:
        cost = round(cost * ctx.price_factor)
    p, req = ctx.principal, ctx.req
    latency = now - out.started
    total, hit = usage.total_tokens, out.cache_hit
    event = {
        "request_id": req.request_id, "time": round(out.wall, 3), "team": p.team,
        "key_id": p.key_id, "model": req.model, "operation": req.operation,
        "deployment": out.deployment.id if out.deployment else None, "stream": req.stream,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens, "total_tokens": total,
        "cost_usd": to_usd(cost), "latency_ms": round(latency * 1000, 2),
        "ttft_ms": round(((out.first_byte or now) - out.started) * 1000, 2),
        "status": out.status, "cache_hit": hit, "retries": out.retries,
        "estimated": estimated, "saved_tokens": out.saved_tokens,
        "saved_cost_usd": to_usd(out.saved_cost_nanos),
    }
    reserved = ctx.reserved_tokens > 0
    return SettleArgs(
        team=p.team, key_id=p.key_id, settlement=ctx.admission_id,
        reservation=ctx.reservation or ctx.admission_id, reserved_nanos=ctx.reserved_nanos,
        token_delta=total - ctx.reserved_tokens if reserved else 0,
        key_tpm=p.key_limits.tpm if reserved else 0,
        team_tpm=p.team_limits.tpm if reserved else 0,
        cost_nanos=cost,
        team_period=p.team_budget.period if p.team_budget else "monthly",
        key_period=p.key_budget.period if p.key_budget else "monthly",
        model=req.model, prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
        cache_hit=hit, error=out.status >= 400, estimated=estimated,
        event=orjson.dumps(event), saved_tokens=out.saved_tokens,
        saved_cost_nanos=out.saved_cost_nanos, cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens)


class Meter:
    """Settles requests in order, in batches, from one background flusher.

    `settle` only queues (no task or round trip per request); the flusher sends
    whatever queued meanwhile as one batch (one pipelined round trip for Redis), so the
    batch size follows the load. While the store is down the queue waits and is retried:
    no usage event is lost while the process lives.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: deque[SettleArgs | Release] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outage = False

    def settle(self, ctx: RequestContext, out: Outcome) -> SettleArgs:
        """Queue the request's settlement (what it is, returned, is also what telemetry
        records of it)."""
        args = settlement(ctx, out)
        self._enqueue(args)
        return args

    def release(self, team: str, reservation: str) -> None:
        """Queue the release of a request's own reservation, whole: its admission may
        have happened in the store although the request never learned it."""
        self._enqueue(Release(team, reservation))

    def _enqueue(self, item: SettleArgs | Release) -> None:
        self._queue.append(item)
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
                log.exception("settlement failed; usage events: %s", b", ".join(
                    a.event for a in batch if isinstance(a, SettleArgs)).decode())
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
            if isinstance(args, SettleArgs):
                log.error("usage event not recorded (store unavailable at shutdown): %s",
                          args.event.decode())
