"""The response cache as the pipeline uses it: `lookup` before admission, `admitted` once
admitted (or `abandon` when refused), `finish` at settlement.

A request the config does not cache costs one dict lookup (`Policies.get`): no hashing,
no store round trip. One it caches costs one round trip to look up (which also takes the
coalescing lock on a miss) and, on a miss, a share of one more after the answer has gone
out: the misses that end in one loop turn are stored together (one task, one pipelined
round trip), beside that turn's settlements. While the store is unreachable the cache
steps aside: requests are served uncached (`x-turnout-cache: bypass`), the outage is
logged once and counted, and the store is not asked again for `_RETRY_S`, so an outage
does not cost every request a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, fields
from typing import Protocol

from gateway.accounting.metering import Outcome, RequestContext, measured
from gateway.cache.assemble import StreamAssembler
from gateway.cache.coalesce import Coalescer, Ended, Flight
from gateway.cache.entry import Entry
from gateway.cache.policy import Policies, RawHeaders, deterministic, directives
from gateway.cache.request_key import entry_key, namespace
from gateway.canonical import CanonicalRequest
from gateway.config import Config
from gateway.store import CacheWrite, Store, StoreUnavailable, layout
from policies.keys import Principal
from policies.pricing import cost_nanos

log = logging.getLogger("turnout.cache")

_RETRY_S = 1.0
HIT, MISS, BYPASS = b"hit", b"miss", b"bypass"  # the x-turnout-cache response header


@dataclass(slots=True)
class CacheCounters:
    hits: int = 0
    coalesced: int = 0  # hits that waited for another request's answer
    misses: int = 0
    takeovers: int = 0  # misses that lead after another leader failed or died
    bypasses: int = 0
    stored: int = 0
    too_large: int = 0  # answers over max_entry_bytes: served, not stored
    wait_timeouts: int = 0  # waited wait_s for another request's answer, then went upstream
    store_errors: int = 0  # the store was unreachable: the cache stepped aside (warned)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True, eq=False)
class CacheTicket:
    """One request's way through the cache, from lookup to settlement."""

    outcome: bytes  # HIT | MISS | BYPASS
    key: str = ""
    ttl_s: float = 0.0
    store: bool = False  # store the answer once it succeeded
    max_bytes: int = 0
    entry: Entry | None = None  # the hit
    flight: Flight | None = None  # this miss leads a coalesced group: waiters await it
    assembler: StreamAssembler | None = None  # a streamed miss, assembled as it passes


class CacheStage(Protocol):
    """What the pipeline asks of the cache (`ResponseCache`, or it traced)."""

    async def lookup(self, principal: Principal, req: CanonicalRequest,
                     headers: RawHeaders) -> CacheTicket | None: ...

    def admitted(self, ct: CacheTicket, req: CanonicalRequest) -> list[tuple[bytes, bytes]]:
        ...

    def abandon(self, ct: CacheTicket) -> None: ...

    def finish(self, ct: CacheTicket, ctx: RequestContext, out: Outcome) -> None: ...


class ResponseCache:
    def __init__(self, store: Store, cfg: Config) -> None:
        self.store = store
        self.policies = Policies(cfg)
        self.counters = CacheCounters()
        self.wait_s = cfg.cache.wait_s or cfg.server.timeouts.total_s
        self.coalescer = Coalescer(store, cfg.cache.lock_ttl_s, self.wait_s)
        self._down_until = 0.0
        self._outage = False
        self._ended: list[Ended] = []  # misses done, their writes not yet sent
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, store: Store, cfg: Config) -> ResponseCache | None:
        """None when the config caches nothing: the pipeline then skips the cache outright."""
        cache = cls(store, cfg)
        return cache if cache.policies.any_enabled else None

    async def lookup(self, principal: Principal, req: CanonicalRequest,
                     headers: RawHeaders) -> CacheTicket | None:
        """None when the cache is off for this model and team (no response header)."""
        policy = self.policies.get(req.model, principal.team)
        if policy is None:
            return None
        d = directives(headers)
        if (not d.lookup and not d.store) or time.monotonic() < self._down_until or (
                policy.deterministic_only and not deterministic(req)):
            self.counters.bypasses += 1
            return CacheTicket(BYPASS)
        ttl = policy.ttl_s if d.ttl_s is None else min(d.ttl_s, policy.max_ttl_s)
        ct = CacheTicket(MISS, entry_key(namespace(principal.team, policy.shared), req), ttl,
                         d.store, policy.max_entry_bytes)
        if d.lookup:
            try:
                waited = await self._find(ct, policy.coalesce)
            except StoreUnavailable as err:
                self._unavailable(err)
                self.counters.bypasses += 1
                return CacheTicket(BYPASS)
            # max-age: an older answer is a miss for this request (it refreshes the entry).
            if ct.entry is not None and (d.max_age_s is None
                                         or time.time() - ct.entry.created <= d.max_age_s):
                ct.outcome = HIT
                self.counters.hits += 1
                self.counters.coalesced += waited
                return ct
            ct.entry = None
            self.counters.takeovers += ct.flight is not None and waited
        self.counters.misses += 1
        return ct

    async def _find(self, ct: CacheTicket, coalesce: bool) -> bool:
        """Look the entry up (and lead, or wait for the leader, when coalescing); True
        when the answer or the lead came after waiting on another request."""
        if not coalesce:
            raw, _ = await self.store.cache_lookup(ct.key, layout.cache_lock(ct.key), b"", 0)
            ct.entry = Entry.decode(raw) if raw is not None else None
            self._available()
            return False
        deadline = self.coalescer.loop.time() + self.wait_s
        try:
            found = await self.coalescer.find(ct.key, deadline)
        except TimeoutError:
            self.counters.wait_timeouts += 1  # on its own from here: uncoalesced
            return True
        self._available()
        ct.entry, ct.flight = found.entry, found.flight
        return found.waited

    def admitted(self, ct: CacheTicket, req: CanonicalRequest) -> list[tuple[bytes, bytes]]:
        """The request was admitted: the response headers that say what the cache did;
        a streamed miss to store is assembled as it passes."""
        headers = [(b"x-turnout-cache", ct.outcome)]
        entry = ct.entry
        if entry is not None:
            headers.append((b"age", b"%d" % max(0, time.time() - entry.created)))
        elif ct.outcome == MISS and req.stream and (ct.store or ct.flight is not None):
            ct.assembler = StreamAssembler(req.operation == "chat", ct.max_bytes)
        return headers

    def abandon(self, ct: CacheTicket) -> None:
        """Never admitted (refused, or failed before): let a waiter lead instead."""
        if ct.flight is not None:
            self._end(ct.flight, None, ct.flight.write(None, 0))

    def finish(self, ct: CacheTicket, ctx: RequestContext, out: Outcome) -> None:
        """At settlement: store a successful miss's answer (errors and cut streams never),
        and end its coalesced group. The writes run in the background."""
        if ct.outcome != MISS:
            return
        entry = _answer(ct, ctx, out) if out.status == 200 else None
        # A fallback model's answer stands in for this request (and its waiters here) only:
        # stored, it would be served for this model long after the model itself is back.
        own = out.deployment is not None and out.deployment.model == ctx.req.model
        value = entry.encode() if entry is not None and ct.store and own else None
        if value is not None and len(value) > ct.max_bytes:
            self.counters.too_large += 1
            value = None
        if ct.flight is not None:
            self._end(ct.flight, entry, ct.flight.write(value, ct.ttl_s))
        elif value is not None:
            self._end(None, entry, CacheWrite(ct.key, layout.cache_lock(ct.key), b"", value,
                                              ct.ttl_s))
        self.counters.stored += value is not None

    def _end(self, flight: Flight | None, entry: Entry | None, write: CacheWrite) -> None:
        """Queue a write; one task sends what queued meanwhile (as the meter settles)."""
        self._ended.append((flight, entry, write))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._ended:
            ended, self._ended = self._ended, []
            try:
                await self.coalescer.finish(ended)
            except StoreUnavailable as err:
                self._unavailable(err)  # not stored: the next request is a miss, no more
            except Exception:
                log.exception("cache write failed")

    def _unavailable(self, err: StoreUnavailable) -> None:
        self.counters.store_errors += 1
        self._down_until = time.monotonic() + _RETRY_S
        if not self._outage:
            self._outage = True
            log.warning("response cache: %s; serving uncached, retrying in %gs", err, _RETRY_S)

    def _available(self) -> None:
        if self._outage:
            self._outage = False
            log.info("response cache: the store is back")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let pending writes land (a leader's waiters elsewhere are waiting for them)."""
        self.coalescer.close()
        if self._writer is not None:
            await asyncio.wait([self._writer], timeout=timeout_s)


def _answer(ct: CacheTicket, ctx: RequestContext, out: Outcome) -> Entry | None:
    """The complete answer a successful miss gave, with what it cost to generate."""
    if out.deployment is None:
        return None
    usage, _ = measured(ctx, out)
    cost = cost_nanos(out.deployment, usage)
    if ct.assembler is not None:
        return ct.assembler.entry(usage, cost, time.time())
    if out.body is None or ctx.req.stream:
        return None
    return Entry(out.body, usage, cost, time.time())
