"""The in-memory store's admission and settlement: `lua/admit.lua` and `lua/settle.lua`
step for step, on plain dicts, with the GCRA and budget arithmetic of `policies/`."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from gateway.store import layout
from gateway.store.base import (
    ALL,
    LIMITERS,
    ROLLUP_METRICS,
    SETTLED_RETENTION_MS,
    AdmitArgs,
    AdmitResult,
    Release,
    SettleArgs,
)
from policies.budgets import day, period_id
from policies.ratelimits import LimitState, Verdict, adjust, gcra

# Counters stay ints here (no parsing per update); `MemoryStore.hgetall` renders them as
# bytes, as Redis returns them.
Hash = dict[str, bytes | int]


@dataclass
class LedgerState:
    stream_maxlen: int
    hashes: dict[str, Hash] = field(default_factory=dict)
    tats: dict[tuple[str, str], float] = field(default_factory=dict)  # (limiters, limiter)
    zsets: dict[str, dict[str, float]] = field(default_factory=dict)  # reservations
    streams: dict[str, deque[tuple[str, bytes]]] = field(default_factory=dict)
    _last_id: tuple[int, int] = (0, 0)

    def hash(self, key: str) -> Hash:
        return self.hashes.setdefault(key, {})

    def xadd(self, key: str, value: bytes, now_ms: float) -> None:
        ms, seq = int(now_ms), 0
        if ms <= self._last_id[0]:  # ids must grow, like Redis's
            ms, seq = self._last_id[0], self._last_id[1] + 1
        self._last_id = (ms, seq)
        stream = self.streams.setdefault(key, deque(maxlen=self.stream_maxlen))
        stream.append((f"{ms}-{seq}", value))


def _incr(h: Hash, name: str, amount: int) -> None:
    h[name] = int(h.get(name, 0)) + amount


def _balance(h: Hash, prefix: str, period: str, now_s: float) -> tuple[int, int]:
    pid = period_id(period, now_s).encode()
    reserved = int(h.get(prefix + "reserved", 0))
    if h.get(prefix + "period") != pid:
        h[prefix + "period"], h[prefix + "spent"] = pid, 0
        return 0, reserved
    return int(h.get(prefix + "spent", 0)), reserved


def _release(st: LedgerState, team: str, rid: str, amount: int | None = None) -> None:
    """Give back `amount` (None: all) of reservation `rid` (lua/common.lua's release)."""
    h, resv = st.hash(layout.budget(team)), st.zsets.setdefault(layout.reservations(team), {})
    record = h.get("r:" + rid)
    if record is None:
        resv.pop(rid, None)
        return
    held_text, key_id = bytes(record).decode().split(" ", 1)
    held = int(held_text)
    amount = held if amount is None else min(amount, held)
    _incr(h, "reserved", -amount)
    _incr(h, f"k:{key_id}:reserved", -amount)
    if amount < held:
        h["r:" + rid] = f"{held - amount} {key_id}".encode()
    else:
        del h["r:" + rid]
        resv.pop(rid, None)


def _state(v: Verdict, limit: int) -> LimitState:
    return LimitState(limit, v.remaining, v.reset_ms)


def _tighter(a: LimitState | None, b: LimitState | None) -> LimitState | None:
    return b if a is None or (b is not None and b.remaining < a.remaining) else a


def admit(st: LedgerState, a: AdmitArgs) -> AdmitResult:
    now_s = time.time()
    now = now_s * 1000
    if a.check_key and a.key_id not in st.hash(layout.keys(a.team)):
        return AdmitResult("revoked")
    passed: dict[str, tuple[tuple[str, str], Verdict, int]] = {}
    for (name, per_key, kind), limit in zip(LIMITERS, a.limits(), strict=True):
        if limit <= 0:
            continue
        lkey = (layout.limiters(a.team), layout.limiter(a.key_id if per_key else None, kind))
        v = gcra(st.tats.get(lkey, 0.0), now, limit, 1 if kind == "rpm" else a.tokens)
        if not v.allowed:
            retry = -1 if math.isinf(v.retry_ms) else math.ceil(v.retry_ms)
            state = _state(v, limit)
            return AdmitResult(name, retry, *((state, None) if kind == "rpm" else (None, state)))
        passed[name] = (lkey, v, limit)

    resv = st.zsets.setdefault(layout.reservations(a.team), {})
    for rid in [r for r, expiry in resv.items() if expiry <= now]:
        _release(st, a.team, rid)
    h = st.hash(layout.budget(a.team))
    kprefix = f"k:{a.key_id}:"
    for budget, prefix, refusal in ((a.team_budget, "", "team_budget"),
                                    (a.key_budget, kprefix, "key_budget")):
        if budget is not None:
            spent, reserved = _balance(h, prefix, budget.period, now_s)
            if spent + reserved + a.cost_nanos > budget.nanos:
                return AdmitResult(refusal)

    for lkey, v, _ in passed.values():
        st.tats[lkey] = v.tat
    if a.cost_nanos > 0 and (a.team_budget is not None or a.key_budget is not None):
        _incr(h, "reserved", a.cost_nanos)
        _incr(h, kprefix + "reserved", a.cost_nanos)
        h["r:" + a.reservation] = f"{a.cost_nanos} {a.key_id}".encode()
        resv[a.reservation] = now + a.ttl_ms
    states = {name: _state(v, limit) for name, (_, v, limit) in passed.items()}
    return AdmitResult(
        requests=_tighter(states.get("key_rpm"), states.get("team_rpm")),
        tokens=_tighter(states.get("key_tpm"), states.get("team_tpm")))


def settle(st: LedgerState, s: SettleArgs) -> None:
    """Once per settlement id (lua/settle.lua)."""
    now_s = time.time()
    now = now_s * 1000
    settled = st.zsets.setdefault(layout.settled(s.team), {})
    if s.settlement in settled:
        return
    # Oldest first (insertion order): prune from the front, not by a scan of every id
    # remembered (15 minutes' worth: a scan per settlement made it O(load)).
    cutoff = now - SETTLED_RETENTION_MS
    while settled:
        oldest = next(iter(settled))
        if settled[oldest] >= cutoff:
            break
        del settled[oldest]
    settled[s.settlement] = now
    if s.token_delta:
        for key_id, limit in ((s.key_id, s.key_tpm), (None, s.team_tpm)):
            if limit > 0:
                lkey = (layout.limiters(s.team), layout.limiter(key_id, "tpm"))
                st.tats[lkey] = adjust(st.tats.get(lkey, 0.0), now, limit, s.token_delta)
    _release(st, s.team, s.reservation, None if s.reserved_nanos == ALL else s.reserved_nanos)
    h = st.hash(layout.budget(s.team))
    kprefix = f"k:{s.key_id}:"
    _balance(h, "", s.team_period, now_s)
    _balance(h, kprefix, s.key_period, now_s)
    _incr(h, "spent", s.cost_nanos)
    _incr(h, kprefix + "spent", s.cost_nanos)
    rollup = st.hash(layout.rollup(s.team))
    prefix = f"{day(now_s)}|{s.model}|"
    for metric, amount in zip(ROLLUP_METRICS, s.rollup(), strict=True):
        if amount:  # absent reads as 0, as in Redis
            _incr(rollup, prefix + metric, amount)
    st.xadd(layout.events(s.team), s.event, now)


def release(st: LedgerState, r: Release) -> None:
    _release(st, r.team, r.reservation)
