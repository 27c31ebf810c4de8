"""Circuit breakers, one per deployment: stop sending to an upstream that is failing.

    CLOSED ──(N consecutive failures, or failure rate ≥ R over ≥ M attempts in the window)──▶ OPEN
    OPEN ──(cooldown over, and the active health check, if any, not failing)──▶ HALF_OPEN
    OPEN ──(the pool's monitor sees the replica back: `healthy_now`, no cooldown)──▶ HALF_OPEN
    HALF_OPEN ──(the one probe request succeeds)──▶ CLOSED
    HALF_OPEN ──(the probe fails)──▶ OPEN (a new cooldown)

Consecutive failures catch a hard-down upstream within a few requests at any traffic
level; the rate over a minimum volume catches one failing intermittently (half its
requests) that never fails N times in a row. Half-open admits a single real request as
the probe, so recovery is confirmed by the traffic it must serve, at the cost of one
request. While a circuit is open the gateway runs an active health check (`/health` for
a pool replica, a cheap request for a provider) whose last result gates half-open: a
deployment still failing its check is not handed a client's request.

Separately, an upstream's `Retry-After` blocks the deployment until then (`not_before`),
whatever the state: a throttling upstream is not broken, but is not sent to early while
another deployment can serve (when none can, dispatch tries the least bad one anyway).
Pure state, no I/O; time comes from the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.canonical import Deployment
from policies.window import SlidingCounts

_OK, _BAD = 0, 1


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Pass(enum.IntEnum):
    """What `Breaker.admit` allows."""

    NO = 0
    YES = 1
    PROBE = 2  # yes, as the half-open circuit's single probe: report its outcome


# Module constants: reading an enum member through its class costs a descriptor call, and
# these are read on every request.
_CLOSED, _OPEN = CircuitState.CLOSED, CircuitState.OPEN
_YES = Pass.YES


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_requests: int = 10
    window_s: float = 10.0
    cooldown_s: float = 5.0
    max_block_s: float = 60.0  # the longest Retry-After honoured as a block


class Breaker:
    __slots__ = ("_on_open", "_window", "blocks_total", "consecutive", "deployment",
                 "failures_total", "health", "last_failure", "not_before", "open_until",
                 "opened_at", "opened_total", "probes_total", "probing", "rejected_total",
                 "settings", "state", "successes_total")

    def __init__(self, settings: BreakerSettings,
                 on_open: Callable[[Breaker], None] | None = None) -> None:
        self.settings = settings
        self._on_open = on_open
        self._window = SlidingCounts(settings.window_s)
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.open_until = 0.0
        self.opened_at: float | None = None
        self.not_before = 0.0
        self.probing = False
        self.health: bool | None = None  # last active health check while open
        self.deployment: Deployment | None = None  # what the health check probes
        self.last_failure: str | None = None
        # Counters (monotonic, for export as Prometheus counters).
        self.opened_total = 0
        self.failures_total = 0
        self.successes_total = 0
        self.rejected_total = 0  # attempts not sent because of the circuit or a block
        self.probes_total = 0
        self.blocks_total = 0

    def admit(self, now: float) -> Pass:
        if self.state is _CLOSED and now >= self.not_before:
            return _YES  # the hot path
        if now < self.not_before:
            self.rejected_total += 1
            return Pass.NO
        if self.state is CircuitState.OPEN:
            if now < self.open_until or self.health is False:
                self.rejected_total += 1
                return Pass.NO
            self.state = CircuitState.HALF_OPEN
            self.probing = False
        if self.probing:
            self.rejected_total += 1
            return Pass.NO
        self.probing = True
        self.probes_total += 1
        return Pass.PROBE

    def success(self, now: float, probe: bool) -> None:
        self.successes_total += 1
        if self.state is _CLOSED:
            self.consecutive = 0
            self._window.add(now, _OK)
        elif probe:
            self.state = CircuitState.CLOSED
            self.consecutive = 0
            self.probing = False
            self.health = None
            self._window.clear()
        # Else a late answer to a request sent before the circuit opened: the probe decides.

    def failure(self, now: float, probe: bool, reason: str) -> None:
        self.failures_total += 1
        self.last_failure = reason
        if self.state is CircuitState.CLOSED:
            self.consecutive += 1
            self._window.add(now, _BAD)
            if self.consecutive >= self.settings.consecutive_failures or self._rate_tripped(now):
                self._open(now)
        elif probe:
            self._open(now)

    def release(self, probe: bool) -> None:
        """An attempt that says nothing about health (the client left, a hedge lost): a
        probe slot it held goes to the next request."""
        if probe and self.state is CircuitState.HALF_OPEN:
            self.probing = False

    def healthy_now(self, now: float) -> None:
        """Another check of its own saw the deployment well again (the pool monitor found
        a stopped or killed replica back): an open circuit's next request is its probe at
        once. Waiting out the cooldown, or this breaker's next health check, would only
        keep a recovered replica's traffic on the others meanwhile."""
        if self.state is CircuitState.OPEN:
            self.health = True
            self.open_until = min(self.open_until, now)

    def block(self, now: float, seconds: float) -> None:
        """The upstream asked us (Retry-After) not to send before `now + seconds`."""
        self.blocks_total += 1
        self.not_before = max(self.not_before, now + min(seconds, self.settings.max_block_s))

    def ready_at(self) -> float:
        """When this deployment may next be tried: for picking the least-bad of many."""
        opened = self.state is not CircuitState.CLOSED
        return max(self.not_before, self.open_until if opened else 0.0)

    def failure_rate(self, now: float) -> tuple[float, int]:
        ok, bad = self._window.totals(now)
        total = ok + bad
        return (bad / total if total else 0.0), total

    def _rate_tripped(self, now: float) -> bool:
        rate, total = self.failure_rate(now)
        return total >= self.settings.min_requests and rate >= self.settings.failure_rate

    def _open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self.open_until = now + self.settings.cooldown_s
        self.opened_at = now
        self.probing = False
        self.health = None
        self.opened_total += 1
        if self._on_open is not None:
            self._on_open(self)

    def snapshot(self, now: float) -> dict[str, Any]:
        rate, volume = self.failure_rate(now)
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive,
            "window_failure_rate": round(rate, 3), "window_attempts": volume,
            "cooldown_left_s": round(max(0.0, self.open_until - now), 3)
            if self.state is CircuitState.OPEN else 0.0,
            "blocked_for_s": round(max(0.0, self.not_before - now), 3),
            "health_check": self.health,
            "last_failure": self.last_failure,
            "opened_total": self.opened_total, "failures_total": self.failures_total,
            "successes_total": self.successes_total, "rejected_total": self.rejected_total,
            "probes_total": self.probes_total, "blocks_total": self.blocks_total,
        }


class Breakers:
    """The breakers of one process, by deployment id, created on first use."""

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float],
                 on_open: Callable[[Breaker], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.on_open = on_open
        self._by_id: dict[str, Breaker] = {}

    def get(self, deployment: Deployment) -> Breaker:
        b = self._by_id.get(deployment.id)
        if b is None:
            b = self._by_id[deployment.id] = Breaker(self.settings, self._opened)
            b.deployment = deployment
        return b

    def _opened(self, breaker: Breaker) -> None:
        if self.on_open is not None:
            self.on_open(breaker)

    def healthy_now(self, deployment_id: str) -> None:
        """The deployment was seen well again (`Breaker.healthy_now`); one never tried has
        no circuit to close."""
        b = self._by_id.get(deployment_id)
        if b is not None:
            b.healthy_now(self.clock())

    def open(self) -> list[Breaker]:
        return [b for b in self._by_id.values() if b.state is CircuitState.OPEN]

    def least_bad(self, deployments: Iterable[Deployment]) -> Deployment | None:
        """The deployment closest to being tried again (then: fewest failures in a row)."""
        return min(deployments, default=None,
                   key=lambda d: (self.get(d).ready_at(), self.get(d).consecutive))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {key: b.snapshot(now) for key, b in sorted(self._by_id.items())}
