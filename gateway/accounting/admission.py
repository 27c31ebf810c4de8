"""Admission: who is asking (authentication) and whether the request may go ahead (rate
limits and budgets), in one store round trip or none.

**Authentication** turns a bearer key into a `Principal` (team, priority, limits, allowed
models). Keys are stored hashed; a lookup is cached in-process for `auth.cache_ttl_s`, so
the hot path does no store round trip for it, and a change announced by `invalidation.py`
drops what was cached at once.

**Admission** reserves the request's estimated tokens (prompt estimate + its output
limit) on the key's and team's TPM limiters, one request on the RPM limiters, and its
worst-case cost (the dearest deployment of its model, fallbacks included) on the budgets;
`metering.py` settles all of it to the real figures afterwards. Anonymous requests (no
keys configured) skip this. With Redis, a key's requests are admitted from its lease when
this process holds one (`lease_holder.py`: a share of the same limits and budgets, taken
from the store ahead of need), and by the store, one round trip each, otherwise.

When the store is unreachable, `admission.on_store_outage` decides: `fail-closed`
refuses with 503; `fail-open` admits against per-process limiters (the same GCRA, in
memory; budgets cannot be checked without the shared ledger, so they are not) and the
usage is recorded once the store is back. The store's breaker (`gateway/store/
breaker.py`) makes that decision immediate while Redis is down: an outage does not cost
every request a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from gateway.accounting.accounts import lookup_principal
from gateway.accounting.invalidation import Announcer, Change
from gateway.accounting.lease_holder import LeaseHolder
from gateway.accounting.metering import Meter, RequestContext
from gateway.canonical import CanonicalRequest, Deployment
from gateway.config.accounts import AdmissionConfig
from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.store import ALL, AdmitArgs, AdmitResult, MemoryStore, Store, StoreUnavailable
from policies import ratelimits
from policies.keys import ANONYMOUS, Principal, hash_key
from policies.lockout import Lockout
from policies.pricing import max_output_tokens, prompt_tokens, worst_case_nanos
from policies.ratelimits import Limits

log = logging.getLogger("turnout.admission")

_RETRY_AFTER_S = 1  # what a 503 for an unavailable store asks clients to wait
_KIND = {"rpm": "requests", "tpm": "tokens"}
_CACHE_MAX = 10_000  # random keys sprayed at us must not grow the cache without bound
T = TypeVar("T")


def reservation_ttl_ms(cfg: AdmissionConfig, total_timeout_s: float) -> int:
    """How long a reservation lives: longer than any request that can still settle it."""
    return int(1000 * (cfg.reservation_ttl_s or total_timeout_s + 60))


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


def bearer(authorization: bytes | None) -> str | None:
    if authorization is None or authorization[:7].lower() != b"bearer ":
        return None
    return authorization[7:].strip().decode("latin-1") or None


class PrincipalCache:
    """Key lookups this process made: key hash → (until, principal or None: no such key),
    least recently used first out; a `Listener` of invalidations, so a change announced
    anywhere drops what it held of the team or key at once."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self.generation = 0  # bumped by every forget: a lookup begun before is not kept

    def get(self, digest: str, now: float) -> tuple[float, Principal | None] | None:
        """The entry, fresh or stale (None: never looked up, or forgotten)."""
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(digest)
        return entry

    def put(self, digest: str, principal: Principal | None, now: float,
            generation: int) -> None:
        if generation == self.generation:  # else a change it may predate came since
            _remember(self._entries, digest, (now + self.ttl_s, principal))

    def __contains__(self, digest: str) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def changed(self, change: Change) -> None:
        """Drop what is held of a changed team or key (a recall changes neither)."""
        if change.leases_only:
            return
        self.generation += 1
        if change.key_hash is not None:
            self._entries.pop(change.key_hash, None)
        for digest, (_, p) in list(self._entries.items()):
            if p is not None and p.team == change.team and change.key_id in (None, p.key_id):
                del self._entries[digest]

    def down(self) -> None:
        self._forget_all()

    def up(self) -> None:
        self._forget_all()

    def _forget_all(self) -> None:
        self.generation += 1
        self._entries.clear()


Restore = Callable[[str], Awaitable[bool]]


class Authenticator:
    """Bearer key → Principal, through `cache`. Failed attempts are counted per client
    address (`Lockout`): a locked-out address gets 429 for keys never seen to succeed,
    without a store lookup, while known-good keys still work from it. A key the lookup
    does not find may be one the config declares and the store lost: `restore` puts it
    back (self-healing, accounts.py) and it is looked up again."""

    def __init__(self, store: Store, cache: PrincipalCache, *, required: bool,
                 admin_key: str | None, declared: dict[str, Principal],
                 lockout: Lockout | None = None, restore: Restore | None = None) -> None:
        self.store = store
        self.cache = cache
        self.required = required
        self._admin = hash_key(admin_key) if admin_key else None
        self._good: OrderedDict[str, None] = OrderedDict()  # hashes seen to succeed
        self._declared = declared  # config keys: they authenticate while the store is down
        self._lockout = lockout or Lockout(0, 1.0)
        self._restore = restore

    async def authenticate(self, authorization: bytes | None, api_key: bytes | None = None,
                           client: str | None = None) -> Principal:
        """From `Authorization: Bearer KEY`, or a surface's own header (Anthropic's
        `x-api-key`) passed as `api_key`; `client`: the caller's address (lockouts)."""
        if not self.required:
            return ANONYMOUS
        key = bearer(authorization) or (api_key.decode("latin-1").strip() if api_key else None)
        if not key:
            raise unauthorized("You didn't provide an API key: send `Authorization: Bearer KEY`.")
        digest = hash_key(key)
        now = time.monotonic()
        hit = self.cache.get(digest, now)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            if digest not in self._good:
                self._check_lockout(client)
            principal = await self._lookup(digest, hit, now)
        if principal is None:
            if digest not in self._good:  # a revoked key's client is not guessing
                self._lockout.failed(client)
            raise unauthorized("Incorrect API key provided.")
        return principal

    async def _lookup(self, digest: str, hit: tuple[float, Principal | None] | None,
                      now: float) -> Principal | None:
        generation = self.cache.generation
        try:
            principal = await lookup_principal(self.store, digest)
            if principal is None and self._restore is not None and await self._restore(digest):
                principal = await lookup_principal(self.store, digest)
        except StoreUnavailable as err:
            log.warning("key lookup: %s", err)
            # A stale entry beats refusing: admission then applies the outage policy.
            known = hit[1] if hit is not None else self._declared.get(digest)
            if known is not None:
                return known
            raise GatewayError(503, "the key store is unavailable; try again shortly",
                               type="server_error", code="store_unavailable") from None
        self.cache.put(digest, principal, now, generation)
        if principal is not None:
            _remember(self._good, digest, None)
        return principal

    def _check_lockout(self, client: str | None) -> None:
        wait = self._lockout.retry_after(client)
        if wait is not None:
            raise GatewayError(
                429, "too many failed authentication attempts from this address; try again"
                f" in {math.ceil(wait)}s", type="rate_limit_error",
                code="too_many_failed_authentications",
                headers={"retry-after": str(math.ceil(wait))})

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    def is_admin(self, authorization: bytes | None, client: str | None = None) -> bool:
        """Whether this is the admin key (a locked-out address is answered 429)."""
        self._check_lockout(client)
        key = bearer(authorization)
        if self._admin and key and hmac.compare_digest(self._admin, hash_key(key)):
            return True
        self._lockout.failed(client)
        return False


def _remember(lru: OrderedDict[str, T], key: str, value: T) -> None:
    """Put `key` last (most recent); past _CACHE_MAX the least recently used goes."""
    lru[key] = value
    lru.move_to_end(key)
    if len(lru) > _CACHE_MAX:
        lru.popitem(last=False)


class AdmissionStage(Protocol):
    """What the pipeline asks of admission (`Admission`, or it traced)."""

    async def admit(self, principal: Principal, req: CanonicalRequest,
                    deployments: Sequence[Deployment]) -> RequestContext: ...

    async def admit_hit(self, principal: Principal, req: CanonicalRequest) -> RequestContext:
        ...


class Admission:
    def __init__(self, store: Store, cfg: AdmissionConfig, ttl_ms: int, meter: Meter,
                 leases: LeaseHolder | None = None, announcer: Announcer | None = None
                 ) -> None:
        self.store = store
        self.fail_open = cfg.on_store_outage == "fail-open"
        self.fallback = Limits(**cfg.fallback.model_dump()) if cfg.fallback else None
        self.default_max_tokens = cfg.default_max_tokens
        self.ttl_ms = ttl_ms
        self.meter = meter  # releases what an admission lost in an outage may have reserved
        self.leases = leases  # None: one store round trip per request
        self.announcer = announcer  # recalls other processes' leases near a limit
        self._recalls: dict[str, asyncio.Future[None]] = {}  # team → the recall under way
        self._local = MemoryStore(stream_maxlen=1000)
        self._outage = False

    async def admit(self, principal: Principal, req: CanonicalRequest,
                    deployments: Sequence[Deployment]) -> RequestContext:
        prompt = prompt_tokens(req.operation, req.body)
        output = max_output_tokens(req.operation, req.body, self.default_max_tokens)
        if principal.anonymous:
            return RequestContext(principal, req, new_id(), prompt, output, 0, ())
        budgeted = principal.team_budget is not None or principal.key_budget is not None
        tokens = prompt + output
        cost = worst_case_nanos(deployments, prompt, output) if budgeted else 0
        leases = self.leases
        if leases is not None and (lease := leases.take(principal, tokens, cost)):
            headers = ratelimits.headers(*lease.states(time.monotonic(), tokens))
            return RequestContext(principal, req, new_id(), prompt, output, tokens,
                                  headers, lease.id, cost, from_lease=True)
        args = AdmitArgs(
            team=principal.team, key_id=principal.key_id, reservation=new_id(),
            check_key=True, key_limits=principal.key_limits, team_limits=principal.team_limits,
            tokens=tokens, team_budget=principal.team_budget, key_budget=principal.key_budget,
            cost_nanos=cost, ttl_ms=self.ttl_ms)
        return await self._decide_context(args, principal, req, prompt, output)

    async def admit_hit(self, principal: Principal, req: CanonicalRequest) -> RequestContext:
        """A request the response cache answers. It counts against the RPM limits (it is a
        request the key made) but reserves no tokens and no budget, and an exhausted budget
        does not refuse it: it generates nothing and costs nothing."""
        if principal.anonymous:
            return RequestContext(principal, req, new_id(), 0, 0, 0, ())
        leases = self.leases
        if leases is not None and (lease := leases.take(principal, 0, 0, start=False)):
            headers = ratelimits.headers(*lease.states(time.monotonic(), 0))
            return RequestContext(principal, req, new_id(), 0, 0, 0, headers, lease.id,
                                  from_lease=True)
        p = principal
        args = AdmitArgs(team=p.team, key_id=p.key_id, reservation=new_id(),
                         check_key=True, key_limits=Limits(rpm=p.key_limits.rpm),
                         team_limits=Limits(rpm=p.team_limits.rpm), tokens=0,
                         team_budget=None, key_budget=None, cost_nanos=0, ttl_ms=self.ttl_ms)
        return await self._decide_context(args, principal, req, 0, 0)

    async def _decide_context(self, args: AdmitArgs, principal: Principal,
                              req: CanonicalRequest, prompt: int, output: int
                              ) -> RequestContext:
        result, shared, lost = await self._decide(args)
        if result.refused and shared and result.refused != "revoked" and result.retry_ms >= 0:
            # Near a limit what the request needs may sit in leases: this process's own,
            # given back at once, else every process's, recalled. Then ask again: exact.
            if self.leases is not None and self.leases.held(principal):
                await self.leases.give_back(principal)
                result, shared, lost = await self._decide(args)
            if result.refused and shared and self.leases is not None:
                await self._recall(principal.team)
                result, shared, lost = await self._decide(args)
        if result.refused:
            raise refusal(result, principal)
        own = args.reservation
        if shared:  # reserved in the store: settlement gives back this request's part
            return RequestContext(principal, req, own, prompt, output, args.tokens,
                                  ratelimits.headers(result.requests, result.tokens),
                                  own, args.cost_nanos)
        # Admitted by the outage policy. If the store's admission was lost on the way
        # back it may have reserved: the settlement gives back whatever is reserved.
        return RequestContext(principal, req, own, prompt, output, 0,
                              ratelimits.headers(result.requests, result.tokens),
                              own, ALL if lost else 0)

    async def _decide(self, args: AdmitArgs) -> tuple[AdmitResult, bool, bool]:
        """(verdict, whether the shared store made it, whether an admission in the store
        may have happened unknown to us: it was sent, and its answer lost)."""
        try:
            result = await self.store.admit(args)
        except StoreUnavailable as err:
            # Fails at once while the store is known to be down (gateway/store/breaker.py).
            if not self._outage:
                self._outage = True
                log.warning("admission: %s; applying %s until it is back", err,
                            "fail-open" if self.fail_open else "fail-closed")
            lost = True  # it may have been sent and run: its answer is what was lost
        else:
            if self._outage:
                self._outage = False
                log.info("admission: the store is back")
            return result, True, False
        if not self.fail_open:
            if lost:  # refused here: whatever the store may have reserved goes back
                self.meter.release(args.team, args.reservation)
            # (What failed goes to the log above, not to the client.)
            raise GatewayError(503, "the rate-limit store is unavailable and the gateway is"
                               " configured to fail closed; try again shortly",
                               type="server_error", code="store_unavailable",
                               headers={"retry-after": str(_RETRY_AFTER_S)})
        local = AdmitArgs(
            team=args.team, key_id=args.key_id, reservation=args.reservation,
            check_key=False, key_limits=self.fallback or args.key_limits,
            team_limits=self.fallback or args.team_limits, tokens=args.tokens,
            team_budget=None, key_budget=None, cost_nanos=0, ttl_ms=args.ttl_ms)
        return await self._local.admit(local), False, lost

    async def _recall(self, team: str) -> None:
        """Every process gives back its leases of `team` (one recall at a time per team
        here: concurrent refusals wait for the one under way)."""
        if self.announcer is None:
            return
        recall = self._recalls.get(team)
        if recall is None:
            recall = self._recalls[team] = asyncio.ensure_future(
                self.announcer.announce(Change(team, leases_only=True)))
            recall.add_done_callback(lambda _: self._recalls.pop(team, None))
        with contextlib.suppress(StoreUnavailable):  # else the refusal stands
            await asyncio.shield(recall)


def refusal(result: AdmitResult, p: Principal) -> GatewayError:
    if result.refused == "revoked":
        return GatewayError(401, "This API key has been revoked.", code="invalid_api_key")
    if result.refused.endswith("budget"):
        whose = f"key {p.key_id}" if result.refused == "key_budget" else f"team {p.team}"
        budget = p.key_budget if result.refused == "key_budget" else p.team_budget
        period = budget.period if budget else ""
        return GatewayError(429, f"{whose} has exhausted its {period} budget"
                            f" (${budget.usd if budget else 0:g}); this request's worst-case"
                            " cost does not fit in what is left", type="insufficient_quota",
                            code="insufficient_quota")
    scope, kind = result.refused.split("_")
    who = f"key {p.key_id}" if scope == "key" else f"team {p.team}"
    state = result.requests or result.tokens
    limit = state.limit if state else 0
    headers = dict((k.decode(), v.decode())
                   for k, v in ratelimits.headers(result.requests, result.tokens))
    if result.retry_ms < 0:
        message = (f"Request too large for {who}: it needs more {_KIND[kind]} than the"
                   f" limit of {limit} per minute")
    else:
        headers["retry-after"] = str(max(1, math.ceil(result.retry_ms / 1000)))
        headers["retry-after-ms"] = str(int(result.retry_ms))
        message = (f"Rate limit reached for {_KIND[kind]} per minute on {who}: limit {limit}."
                   f" Please try again in {ratelimits.duration(result.retry_ms)}.")
    return GatewayError(429, message, type=_KIND[kind], code="rate_limit_exceeded",
                        headers=headers)
