"""Budgets: USD per UTC calendar period, held as integer nano-dollars.

Money is counted in integers (1e-9 USD) so sums are exact: a budget that fits exactly N
requests admits exactly N, however the reservations interleave (floats would drift).
2^53 nano-dollars is $9M per period, far above any budget, so Lua's doubles stay exact.

A request reserves its worst-case cost before dispatch: it fits while
`spent + reserved + cost <= budget`. Settlement releases the reservation and adds the
real cost; a reservation nobody settles (its process died) expires and is released.
When the period changes, `spent` starts again from 0 while outstanding reservations
carry over (they are still owed).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Literal

Period = Literal["daily", "monthly"]
NANOS = 1_000_000_000


def to_nanos(usd: float) -> int:
    return round(usd * NANOS)


def to_usd(nanos: int) -> float:
    return nanos / NANOS


@dataclass(slots=True, frozen=True)
class Budget:
    nanos: int
    period: Period = "monthly"

    @property
    def usd(self) -> float:
        return to_usd(self.nanos)

    def to_dict(self) -> dict[str, Any]:
        return {"usd": self.usd, "period": self.period}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Budget | None:
        if not d:
            return None
        period: Period = "daily" if d.get("period") == "daily" else "monthly"
        return cls(to_nanos(float(d["usd"])), period)


def day(now_s: float) -> str:
    """The UTC calendar day, `YYYY-MM-DD` (the ledger's rollup key)."""
    return _day(int(now_s // 86400))


@functools.lru_cache(maxsize=4)  # it changes once a day: don't format it per request
def _day(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days * 86400))


def period_id(period: str, now_s: float) -> str:
    """`2026-05-01` for daily budgets, `2026-05` for monthly ones (UTC)."""
    return day(now_s) if period == "daily" else day(now_s)[:7]
