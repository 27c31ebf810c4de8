"""Requests- and tokens-per-minute limits: GCRA, and OpenAI's rate-limit headers.

GCRA (the generic cell rate algorithm) keeps one number per limiter, the theoretical
arrival time (TAT): each unit (a request, a token) pushes it `60 s / limit` into the
future, and a request fits while TAT - 60 s stays at or before now. So a full minute's
allowance can be spent in a burst, and capacity then returns one unit per emission
interval, smoothly, with no window edge where twice the limit gets through (the flaw of
fixed windows) and without a log that grows with traffic (sliding-window ZSETs). It takes
quantities natively, which TPM needs, and its state is one key with a TTL.

This module is the reference implementation: the in-memory store and the per-process
fail-open fallback run it; `gateway/store/lua/admit.lua` is the same arithmetic in Lua.
Times are milliseconds (floats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

WINDOW_MS = 60_000.0  # limits are per minute
EPS_MS = 1e-3  # absorbs float drift of repeated `tat += interval`


@dataclass(slots=True, frozen=True)
class Limits:
    rpm: int = 0  # 0: unlimited
    tpm: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"rpm": self.rpm, "tpm": self.tpm}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Limits:
        d = d or {}
        return cls(rpm=int(d.get("rpm") or 0), tpm=int(d.get("tpm") or 0))


@dataclass(slots=True)
class Verdict:
    allowed: bool
    tat: float  # the limiter's TAT after this decision (unchanged when refused)
    remaining: int
    reset_ms: float  # until the limiter is back to its full allowance
    retry_ms: float  # refused: until this request would fit (inf: it never will)


def gcra(tat: float, now: float, limit: int, qty: int) -> Verdict:
    interval = WINDOW_MS / limit
    base = max(tat, now)
    new_tat = base + qty * interval
    allow_at = new_tat - WINDOW_MS
    if allow_at > now + EPS_MS:
        retry = math.inf if qty > limit else allow_at - now
        return Verdict(False, tat, _remaining(now, base, interval), base - now, retry)
    return Verdict(True, new_tat, _remaining(now, new_tat, interval), new_tat - now, 0.0)


def adjust(tat: float, now: float, limit: int, delta: int) -> float:
    """Settle a reservation: charge (delta > 0) or refund (delta < 0) tokens."""
    return max(tat, now) + delta * (WINDOW_MS / limit)


def _remaining(now: float, tat: float, interval: float) -> int:
    return max(0, math.floor((now + WINDOW_MS - tat) / interval + 1e-9))


class LimitState(NamedTuple):
    """What the headers report for one kind (requests or tokens): the tighter limiter.
    (A named tuple: one is made per admission, at a third of a frozen dataclass's cost.)"""

    limit: int
    remaining: int
    reset_ms: float


def duration(ms: float) -> str:
    """OpenAI's reset format, Go-style: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if ms < 1000:
        return f"{math.ceil(ms)}ms" if ms > 0 else "0ms"
    total = math.ceil(ms) / 1000
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    secs = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs}"
    if minutes:
        return f"{int(minutes)}m{secs}"
    return secs


_NAMES = tuple((b"x-ratelimit-limit-" + kind, b"x-ratelimit-remaining-" + kind,
                b"x-ratelimit-reset-" + kind) for kind in (b"requests", b"tokens"))


def headers(requests: LimitState | None, tokens: LimitState | None
            ) -> tuple[tuple[bytes, bytes], ...]:
    out: tuple[tuple[bytes, bytes], ...] = ()
    for (limit, remaining, reset), state in zip(_NAMES, (requests, tokens), strict=True):
        if state is not None:
            out += ((limit, b"%d" % state.limit), (remaining, b"%d" % state.remaining),
                    (reset, duration(state.reset_ms).encode()))
    return out
