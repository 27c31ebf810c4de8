"""Leases: a process's share of a key's limits and budgets, taken ahead of need.

Admitting a request in the shared store costs a round trip before the request can go
upstream (0.1-0.4 ms to a Redis on another core: most of what the gateway adds to a lone
request). A lease takes a share of what a key and its team have left (requests, tokens,
nanos of budget) in one store call that counts it as used at once
(gateway/store/lua/lease.lua); the process then admits the key's requests from it
locally. In the background it is topped up when it runs low, and renewed every RENEW_S:
a fresh share comes, then what is left of the old one goes back (it serves meanwhile).
Nothing is admitted that the store did not grant.

Budgets hold exactly: a share is a reservation like a request's. A rate limiter counts a
share's requests and tokens when it is granted, up to MAX_AGE_S before they are used, and
its capacity comes back as time passes: so over any interval a key may get its limit's
worth for that interval plus MAX_AGE_S of it (1/60 of a per-minute limit), and never more
than the shares held. Hence the renewals, and a lease not renewed for MAX_AGE_S (the store
is unreachable) admits nothing.

The price is capacity held by one process and not yet used, which another process cannot
have meanwhile. It is kept small: a share covers about HORIZON_S of the key's demand in
this process (doubled, or twice the demand since the last ask, when requests found it
empty: bursts; halving over IDLE_S while it never runs below half), at most
1/SHARE of what each limiter and budget has left, and none is granted unless
MIN_REQUESTS requests' worth fits in that: close to its limits a key is admitted request
by request, exactly as without leases. A share goes back when its key has been
idle for IDLE_S, when its policy changes, at shutdown, and whenever the store refuses a
request of this process's that it might have let through.

This module is the bookkeeping, without I/O; gateway/accounting/lease_holder.py talks to the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.budgets import Budget
from policies.keys import Principal
from policies.ratelimits import Limits, LimitState

SHARE = 16  # a grant takes at most 1/SHARE of what a limiter or budget has left
MIN_REQUESTS = 4  # a grant worth fewer requests than this is not taken
HORIZON_S = 0.25  # a grant covers about this much of the key's demand here
RENEW_S = 0.5  # a share in use is renewed after this long
MAX_AGE_S = 1.0  # and not used after this long, whatever happened to the renewal
IDLE_S = 5.0  # an unused lease goes back after this long
_AVG = 0.1  # weight of the latest request in the per-request averages
# A renewal shrinks an unneeded target by this: by half over IDLE_S, the time after which an
# unused lease goes back whole (bursts a few seconds apart keep their share).
_DECAY = 0.5 ** (RENEW_S / IDLE_S)


@dataclass(slots=True, frozen=True)
class Policy:
    """What a lease was granted under; another policy needs another lease."""

    key_limits: Limits
    team_limits: Limits
    team_budget: Budget | None
    key_budget: Budget | None

    @property
    def limits(self) -> tuple[int, int, int, int]:
        """In the store's LIMITERS order."""
        return (self.key_limits.rpm, self.key_limits.tpm,
                self.team_limits.rpm, self.team_limits.tpm)

    @classmethod
    def of(cls, p: Principal) -> Policy:
        return cls(p.key_limits, p.team_limits, p.team_budget, p.key_budget)


@dataclass(slots=True)
class Lease:
    id: str
    principal: Principal  # the last seen using it (cached: `is` says the policy is the same)
    policy: Policy
    tokens_per: float  # a request's tokens and worst-case nanos, on average
    nanos_per: float
    # Free: granted and not yet given to a request (inf: that dimension has no bound).
    requests: float = 0.0
    tokens: float = 0.0
    nanos: float = 0.0
    target: int = MIN_REQUESTS  # requests a grant aims to hold
    granted_at: float = -math.inf  # the last grant (renewal or top-up)
    asked_at: float = -math.inf  # the last ask: the demand below is counted since
    renewed_at: float = -math.inf  # the last renewal: every unit held is younger
    used_at: float = 0.0
    taken: int = 0  # requests admitted from it since the last ask
    missed: int = 0  # requests that found it empty since the last ask (some while it was
    # being answered: they count towards the next ask)
    renewing: bool = False
    dipped: bool = False  # ran low (or empty) since the last renewal: the target was needed
    # The store's view at the last grant (for the x-ratelimit-* headers).
    rpm: LimitState | None = None
    tpm: LimitState | None = None

    def take(self, tokens: int, nanos: int, now: float) -> bool:
        """Admit one request of `tokens` and `nanos` from what is free."""
        if tokens or nanos:  # a response-cache hit's (0, 0) says nothing of the key's size
            self.tokens_per += (tokens - self.tokens_per) * _AVG
            self.nanos_per += (nanos - self.nanos_per) * _AVG
        if (now - self.renewed_at > MAX_AGE_S or self.requests < 1 or self.tokens < tokens
                or self.nanos < nanos):
            self.missed += 1
            self.dipped = True
            return False
        self.requests -= 1
        self.tokens -= tokens
        self.nanos -= nanos
        self.taken += 1
        self.used_at = now
        return True

    def _worth(self, requests: float) -> tuple[float, float, float]:
        return requests, requests * self.tokens_per, requests * self.nanos_per

    @property
    def low(self) -> bool:
        """Below half of what a grant aims at, in any dimension: time to top up."""
        half = self.target / 2  # (_worth(half), compared without building it: per request)
        return (self.requests < half or self.tokens < half * self.tokens_per
                or self.nanos < half * self.nanos_per)

    def wanted(self, now: float, renewal: bool) -> tuple[tuple[int, int, int],
                                                         tuple[int, int, int]]:
        """(what to ask for, the least worth taking): requests, tokens, nanos. A renewal
        asks for the whole target; a top-up for what the lease lacks of it, only in the
        dimensions short of it (0 for the others: nothing to ask). The target follows
        the key's demand here since the last ask; when requests found the lease empty (a
        burst) it doubles, or grows to twice that demand; renewals shrink it, by half over
        IDLE_S, while the lease never runs low. Asking starts the demand count again."""
        rate = self.taken / max(0.05, now - self.asked_at) if self.taken else 0.0
        # Requests found it empty: too small for the bursts it sees. Double it at least.
        burst = 2 * max(self.target, self.taken + self.missed) if self.missed else 0
        floor = int(self.target * _DECAY) if renewal and not self.dipped else self.target
        self.target = max(MIN_REQUESTS, floor, math.ceil(rate * HORIZON_S), burst)
        target = [math.ceil(x) for x in self._worth(self.target)]
        least = [math.ceil(x) for x in self._worth(MIN_REQUESTS)]
        if not renewal:
            for i, free in enumerate((self.requests, self.tokens, self.nanos)):
                short = target[i] - min(free, target[i])
                target[i] = max(least[i], math.ceil(short)) if short > 0 else 0
                least[i] = min(least[i], target[i])
        if any(target):
            self.taken = self.missed = 0
            self.asked_at = now
            if renewal:
                self.dipped = False
        return (target[0], target[1], target[2]), (least[0], least[1], least[2])

    def hand_back(self) -> tuple[int, int, int]:
        """Empty it: the units it held, of each bounded dimension, to give back."""
        requests, tokens, nanos = (0 if math.isinf(x) else int(x)
                                   for x in (self.requests, self.tokens, self.nanos))
        self.requests = self.tokens = self.nanos = 0.0
        return requests, tokens, nanos

    def granted(self, amounts: tuple[float, float, float], rpm: LimitState | None,
                tpm: LimitState | None, now: float, renewal: bool) -> tuple[int, int, int]:
        """Add a top-up's grant; or replace what it held by a renewal's, returning the old
        share's units left (to give back: (0, 0, 0) after a top-up)."""
        old = self.hand_back() if renewal else (0, 0, 0)
        if renewal:
            self.renewed_at = now
        self.requests += amounts[0]
        self.tokens += amounts[1]
        self.nanos += amounts[2]
        self.rpm, self.tpm = rpm, tpm
        self.granted_at = now
        return old

    def states(self, now: float, tokens: int) -> tuple[LimitState | None, LimitState | None]:
        """The x-ratelimit-* view after a request of `tokens`: the store's at the last
        grant, with what this lease still holds counted as remaining (it is: for this
        key, here)."""
        elapsed = (now - self.granted_at) * 1000
        return (_view(self.rpm, self.requests, 1, elapsed),
                _view(self.tpm, self.tokens, tokens, elapsed))


def _view(state: LimitState | None, free: float, used: int, elapsed_ms: float
          ) -> LimitState | None:
    if state is None:
        return None
    # What a limiter counted at an earlier grant may have come back in its view since:
    # never more than the limit less this request. (Comparisons, not min()/max(): this
    # runs twice per request.)
    limit, remaining, reset_ms = state
    remaining += int(free)
    if remaining > limit - used:
        remaining = limit - used
    reset_ms -= elapsed_ms
    return LimitState(limit, remaining if remaining > 0 else 0,
                      reset_ms if reset_ms > 0 else 0.0)
