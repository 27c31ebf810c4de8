"""The leases this process holds (policies/leases.py) and their traffic with the store.

`take` is on the hot path: a dict lookup and a few comparisons, no I/O. Everything else
runs in the background: a key's first request, admitted by the store as usual, starts
its lease; a lease running low is topped up; every RENEW_S it is renewed (a fresh share
comes, then what is left of the old one goes back: it serves until then); idle ones go
back. A request that finds its lease empty (a burst outran it) is admitted by the store.

A lease admits without asking the store whether its key still exists, so leases are
held only while this process hears invalidations (gateway/accounting/invalidation.py): a revoked
key's or a changed team's leases are dropped there before the change is acknowledged,
and all of them when the subscription is lost (it may have missed one).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

from gateway.accounting.invalidation import Change
from gateway.store import LeaseArgs, RedisStore, StoreUnavailable
from policies.keys import Principal
from policies.leases import IDLE_S, MAX_AGE_S, RENEW_S, SHARE, Lease, Policy

log = logging.getLogger("turnout.leases")

_RETRY_S = 1.0  # after a key could not get a lease (near its limits, or no store)
_CLOSE_S = 2.0  # at shutdown, the most to wait for leases to go back
_NOTHING = (0, 0, 0)

Key = tuple[str, str]  # (team, key id)


class LeaseHolder:
    """This process's leases; a `Listener` of invalidations (leases are used only while
    they are heard)."""

    def __init__(self, store: RedisStore, loop: asyncio.AbstractEventLoop, *, ttl_ms: int
                 ) -> None:
        self._store = store
        self._loop = loop  # asked for once: a getpid() per call on Python 3.11
        self._ttl_ms = ttl_ms  # a grant's budget reservation lapses this long after it
        self._live = False  # whether invalidations reach this process now
        self._held: dict[Key, Lease] = {}
        self._not_before: dict[Key, float] = {}  # no lease to be had until then
        self._closed = False
        self._prefix = "lease:" + os.urandom(6).hex()  # this process's, never reused
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None
        self.admitted = 0  # requests admitted from leases (the rest: by the store)

    # -- the hot path ----------------------------------------------------------------------

    def take(self, p: Principal, tokens: int, nanos: int, *, start: bool = True
             ) -> Lease | None:
        """The lease that admitted this request, or None: the store must admit it.
        `start`: whether this request may start a lease (not a response-cache hit: its
        zero tokens and cost say nothing of the key's requests)."""
        key = (p.team, p.key_id)
        lease = self._held.get(key)
        now = time.monotonic()
        if lease is None or (lease.principal is not p and not self._still(lease, p)):
            if start:
                self._new(key, p, tokens, nanos, now)
            return None
        if not lease.take(tokens, nanos, now):
            self._renew(key, lease, now, renewal=now - lease.renewed_at > MAX_AGE_S)
            return None
        if lease.low:
            lease.dipped = True
            self._renew(key, lease, now, renewal=False)
        self.admitted += 1
        return lease

    @staticmethod
    def _still(lease: Lease, p: Principal) -> bool:
        """Whether a fresh principal object (its cache entry was refreshed) still has the
        policy the lease was granted under."""
        if Policy.of(p) != lease.policy:
            return False
        lease.principal = p
        return True

    # -- grants ----------------------------------------------------------------------------

    def _new(self, key: Key, p: Principal, tokens: int, nanos: int, now: float) -> None:
        if self._closed or not self._live or self._refused(key, now):
            return
        self._give_back(key)  # one granted under an older policy
        lease = self._held[key] = Lease(f"{self._prefix}:{next(self._ids)}", p, Policy.of(p),
                                        tokens_per=float(tokens), nanos_per=float(nanos))
        lease.used_at = now
        self._renew(key, lease, now, renewal=True)
        if self._keeper is None or self._keeper.done():
            self._keeper = self._loop.create_task(self._keep())

    def _refused(self, key: Key, now: float) -> bool:
        """Whether the store refused this key a lease within _RETRY_S."""
        until = self._not_before.get(key)
        if until is not None and until <= now:
            del self._not_before[key]
            return False
        return until is not None

    def _renew(self, key: Key, lease: Lease, now: float, *, renewal: bool) -> None:
        """Ask for more (a top-up), or (`renewal`) for a fresh share to replace what it
        holds, which it serves from until the answer."""
        if lease.renewing or self._refused(key, now):
            return
        wanted, least = lease.wanted(now, renewal)
        if wanted == _NOTHING:  # a top-up, and nothing is short of the target
            return
        lease.renewing = True
        args = self._args(key, lease, _NOTHING, wanted, least)
        self._spawn(self._grant(key, lease, args, renewal))

    def _args(self, key: Key, lease: Lease, returning: tuple[int, int, int],
              wanted: tuple[int, int, int], least: tuple[int, int, int]) -> LeaseArgs:
        p = lease.policy
        return LeaseArgs(team=key[0], key_id=key[1], lease_id=lease.id, limits=p.limits,
                         returning=returning, wanted=wanted, least=least,
                         team_budget=p.team_budget, key_budget=p.key_budget,
                         ttl_ms=self._ttl_ms, share=SHARE)

    async def _grant(self, key: Key, lease: Lease, args: LeaseArgs, renewal: bool) -> None:
        grant = None
        try:
            grant = await self._store.lease(args)
        except StoreUnavailable as err:  # what it handed back may not have gone back:
            # the limiters refill by themselves and the reservation lapses
            log.debug("lease for key %s of team %s: %s", key[1], key[0], err)
        except Exception:  # a bug of ours: no lease for a while, the store admits
            log.exception("lease for key %s of team %s failed", key[1], key[0])
        finally:
            lease.renewing = False
        current = self._held.get(key) is lease
        if grant is None or grant.refused:  # no store, nothing to spare, or revoked
            if current:
                self._not_before[key] = time.monotonic() + _RETRY_S
                if renewal or (grant is not None and grant.refused == "revoked"):
                    self._give_back(key)  # no fresh share: the old one goes, unused
            return
        old = lease.granted(grant.granted, grant.requests, grant.tokens, time.monotonic(),
                            renewal)
        self._spawn(self._give_units(key, lease, old))  # a renewal's: the old share's rest
        if not current or not self._live:
            # Dropped meanwhile (a revocation, a policy change, invalidations lost, a
            # refusal, shutdown): this grant must not be used. Give it back whole.
            self._spawn(self._hand_back(key, lease))

    # -- giving back -----------------------------------------------------------------------

    def held(self, p: Principal) -> bool:
        return (p.team, p.key_id) in self._held

    async def give_back(self, p: Principal) -> None:
        """Return this key's lease now (the store refused one of its requests: the lease
        may hold what that request needs)."""
        task = self._give_back((p.team, p.key_id))
        if task is not None:  # finished even if the request is cancelled meanwhile
            await asyncio.shield(task)

    def drop(self, team: str, key_id: str | None = None) -> Awaitable[object] | None:
        """Stop using the leases of a key (None: of every key of the team) at once; the
        returned awaitable (None: nothing held) finishes when they are given back."""
        keys = [k for k in self._held if k[0] == team and key_id in (None, k[1])]
        tasks = [t for t in map(self._give_back, keys) if t is not None]
        return asyncio.gather(*tasks) if tasks else None

    def drop_all(self) -> None:
        for key in list(self._held):
            self._give_back(key)

    # -- invalidations ---------------------------------------------------------------------

    def changed(self, change: Change) -> Awaitable[object] | None:
        return self.drop(change.team, change.key_id)

    def down(self) -> None:
        self._live = False
        self.drop_all()

    def up(self) -> None:
        self._live = True

    def _give_back(self, key: Key) -> asyncio.Task[None] | None:
        lease = self._held.pop(key, None)
        return self._spawn(self._hand_back(key, lease)) if lease is not None else None

    async def _hand_back(self, key: Key, lease: Lease) -> None:
        await self._give_units(key, lease, lease.hand_back())

    async def _give_units(self, key: Key, lease: Lease, units: tuple[int, int, int]) -> None:
        """Give back `units` (requests, tokens, nanos) this lease took and did not use."""
        if units == _NOTHING:
            return
        try:
            await self._store.lease(self._args(key, lease, units, _NOTHING, _NOTHING))
        except StoreUnavailable as err:  # the limiters refill and the reservation lapses
            log.debug("returning lease of key %s of team %s: %s", key[1], key[0], err)
        except Exception:  # a bug of ours: the same, logged
            log.exception("returning lease of key %s of team %s failed", key[1], key[0])

    async def _keep(self) -> None:
        """While any lease is held: renew those due, give back those idle for IDLE_S."""
        while self._held:
            await asyncio.sleep(RENEW_S / 2)
            now = time.monotonic()
            for key, lease in list(self._held.items()):
                if now - lease.used_at > IDLE_S:
                    self._give_back(key)
                elif now - lease.renewed_at > RENEW_S:
                    self._renew(key, lease, now, renewal=True)
            for key in [k for k, until in self._not_before.items() if until <= now]:
                del self._not_before[key]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Give every lease back (at shutdown, before the store closes)."""
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
        self.drop_all()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_CLOSE_S)
