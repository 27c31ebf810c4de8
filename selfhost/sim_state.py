"""Simulator state: latency profiles, injectable faults, observable stats, the FIFO scheduler.

Everything here is plain Python; the HTTP server lives in `selfhost/sim.py`.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

# ---------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True, slots=True)
class SimProfile:
    """Latency and capacity model of one simulated server.

    TTFT = queue wait + (base_ttft_ms + prefill_ms_per_token * uncached prompt tokens) * J;
    each later token follows itl_ms * J later, J drawn afresh from [1 - jitter, 1 + jitter].
    """

    name: str
    max_num_seqs: int
    base_ttft_ms: float
    prefill_ms_per_token: float
    itl_ms: float
    jitter: float

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if min(self.base_ttft_ms, self.prefill_ms_per_token, self.itl_ms) < 0:
            raise ValueError("latencies must not be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @classmethod
    def named(cls, name: str, **overrides: Any) -> SimProfile:
        """A shipped profile by name, with any field overridden."""
        try:
            base = PROFILES[name]
        except KeyError:
            raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}") from None
        return replace(base, **overrides)


PROFILES: dict[str, SimProfile] = {
    p.name: p
    for p in (
        SimProfile("fast-gpu", 64, 20.0, 0.05, 10.0, 0.1),
        SimProfile("slow-gpu", 16, 80.0, 0.2, 40.0, 0.1),
        SimProfile("cloud", 1000, 250.0, 0.02, 15.0, 0.2),
        # No delays at all: unit tests and throughput benchmarks of the gateway itself.
        SimProfile("instant", 1_000_000, 0.0, 0.0, 0.0, 0.0),
    )
}


class Timing:
    """A profile's latencies, each later token's and TTFT's factor J drawn by a generator
    of its own (so latency draws never shift which requests a fault rate picks)."""

    def __init__(self, profile: SimProfile, seed: int) -> None:
        self.profile = profile
        self._rng = random.Random(seed)

    def _jitter(self) -> float:
        j = self.profile.jitter
        return 1.0 + self._rng.uniform(-j, j) if j else 1.0

    def ttft(self, uncached_tokens: int, extra_ms: float = 0.0) -> float:
        """Seconds to the first token, a fault's `extra_ms` added."""
        p = self.profile
        work = (p.base_ttft_ms + p.prefill_ms_per_token * uncached_tokens) * self._jitter()
        return (work + extra_ms) / 1e3

    def itls(self, count: int) -> list[float]:
        base = self.profile.itl_ms / 1e3
        if not base or not self.profile.jitter:
            return [base] * count
        return [base * self._jitter() for _ in range(count)]

# ---------------------------------------------------------------------------------------------
# Faults

FaultKind = Literal["status", "hang", "reset", "disconnect"]
_KINDS = ("status", "hang", "reset", "disconnect")


@dataclass(frozen=True, slots=True)
class FaultAction:
    """What to do to one request instead of (or, for `disconnect`, in the middle of) serving it."""

    kind: FaultKind
    status: int = 0
    after_chunks: int = 0

    @property
    def label(self) -> str:
        return str(self.status) if self.kind == "status" else self.kind


@dataclass(slots=True)
class FailNext:
    """The next `count` inference requests fail with `status` (kind "status") or hang / reset /
    disconnect after `after_chunks` stream events (a non-stream request is reset instead)."""

    count: int
    status: int = 503
    kind: FaultKind = "status"
    after_chunks: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"fail_next.kind must be one of {_KINDS}")
        if self.count < 0 or self.after_chunks < 0:
            raise ValueError("fail_next.count and after_chunks must not be negative")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError("fail_next.status must be a 4xx or 5xx code")

    def action(self) -> FaultAction:
        return FaultAction(self.kind, self.status, self.after_chunks)


_RATE_ACTIONS = (
    ("rate_429", FaultAction("status", 429)),
    ("rate_500", FaultAction("status", 500)),
    ("rate_503", FaultAction("status", 503)),
    ("rate_hang", FaultAction("hang")),
    ("rate_reset", FaultAction("reset")),
)


@dataclass
class Faults:
    """Failure injection; mutate the fields from Python or replace it over `POST /sim/faults`.

    Rates are probabilities per inference request, drawn from the simulator's seeded RNG
    (one draw partitioned in field order, so they are exclusive). `fail_next` wins over rates.
    Faults strike before the body is validated, as an overloaded server or proxy would.
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_hang: float = 0.0  # accept, never answer, until the client goes away
    rate_reset: float = 0.0  # TCP RST without any response
    retry_after_s: float = 1.0  # Retry-After / retry-after-ms on injected 429s
    disconnect_after_chunks: int | None = None  # every stream: k SSE events, then drop
    extra_ttft_ms: float = 0.0  # added to every TTFT: a server that turned slow
    unhealthy: bool = False  # GET /health answers 503, as vLLM does when its engine died
    fail_next: FailNext | None = None

    def __post_init__(self) -> None:
        for name, _ in _RATE_ACTIONS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.retry_after_s < 0 or self.extra_ttft_ms < 0:
            raise ValueError("retry_after_s and extra_ttft_ms must not be negative")
        if self.disconnect_after_chunks is not None and self.disconnect_after_chunks < 0:
            raise ValueError("disconnect_after_chunks must not be negative")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Parse the JSON body of `POST /sim/faults`; raises ValueError on unknown or bad fields."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault fields {unknown}; known: {sorted(known)}")
        values = dict(data)
        nxt = values.get("fail_next")
        try:
            if isinstance(nxt, Mapping):
                values["fail_next"] = FailNext(**nxt)
            return cls(**values)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def draw(self, rng: random.Random, stream: bool) -> FaultAction | None:
        """The fault for the next inference request, if any (consumes `fail_next`)."""
        nxt = self.fail_next
        if nxt is not None and nxt.count > 0:
            nxt.count -= 1
            if nxt.count == 0:
                self.fail_next = None
            return nxt.action()
        if self.rate_429 or self.rate_500 or self.rate_503 or self.rate_hang or self.rate_reset:
            u, acc = rng.random(), 0.0
            for name, action in _RATE_ACTIONS:
                acc += getattr(self, name)
                if u < acc:
                    return action
        if stream and self.disconnect_after_chunks is not None:
            return FaultAction("disconnect", after_chunks=self.disconnect_after_chunks)
        return None


# ---------------------------------------------------------------------------------------------
# Stats


@dataclass
class SimStats:
    """Counters for tests and `GET /sim/stats`; safe to read and wait on from any thread.

    `requests_total`, `active`, `completed`, `cancelled`, `aborted` and `last_*` cover inference
    requests only (chat, completions, embeddings), so health probes and metric scrapes never
    disturb exact counts; `by_path` counts every request.
    """

    requests_total: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)  # answered inference requests
    active: int = 0  # in flight right now
    completed: int = 0  # answered in full (any status)
    cancelled: int = 0  # the client went away first
    aborted: int = 0  # the simulator dropped the connection on purpose (reset / disconnect)
    injected: dict[str, int] = field(default_factory=dict)  # faults, by label ("429", "hang")
    running: int = 0  # holding one of max_num_seqs slots
    waiting: int = 0  # queued for a slot
    last_path: str | None = None
    last_headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    last_body: Any = None  # parsed JSON, None when it did not parse
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def wait_for(self, predicate: Callable[[SimStats], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate(stats)` holds (re-checked on every change) or `timeout` passes."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def as_dict(self) -> dict[str, Any]:
        with self._cond:
            data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_cond"}
            return {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}

    def count_path(self, path: str) -> None:
        with self._cond:
            self.by_path[path] = self.by_path.get(path, 0) + 1
            self._cond.notify_all()

    def begin(self, path: str, headers: Mapping[str, str], body: Any) -> None:
        with self._cond:
            self.by_path[path] = self.by_path.get(path, 0) + 1
            self.requests_total += 1
            self.active += 1
            self.last_path = path
            self.last_headers = _lower_keys(headers)
            self.last_body = body
            self._cond.notify_all()

    def finish(self, status: int) -> None:
        with self._cond:
            self.active -= 1
            self.completed += 1
            self.by_status[status] = self.by_status.get(status, 0) + 1
            self._cond.notify_all()

    def end_early(self, *, aborted: bool) -> None:
        with self._cond:
            self.active -= 1
            if aborted:
                self.aborted += 1
            else:
                self.cancelled += 1
            self._cond.notify_all()

    def fault(self, label: str) -> None:
        with self._cond:
            self.injected[label] = self.injected.get(label, 0) + 1
            self._cond.notify_all()

    def set_load(self, running: int, waiting: int) -> None:
        with self._cond:
            self.running = running
            self.waiting = waiting
            self._cond.notify_all()


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers.items():
        key = key.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


# ---------------------------------------------------------------------------------------------
# Scheduler


class FifoSlots:
    """`max_num_seqs` slots handed out strictly first come, first served.

    Unlike asyncio.Semaphore its queue is observable, and a freed slot passes straight to the
    oldest waiter, so late arrivals can never overtake queued requests.
    """

    def __init__(self, limit: int, on_change: Callable[[int, int], None]) -> None:
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.limit and not self._waiters:
            self.running += 1
            self._on_change(self.running, len(self._waiters))
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._on_change(self.running, len(self._waiters))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.cancelled():
                if fut in self._waiters:  # release() may already have skipped past it
                    self._waiters.remove(fut)
                self._on_change(self.running, len(self._waiters))
            else:  # granted a slot in the same tick the client went away: pass it on
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():  # skip waiters cancelled but not yet resumed
                fut.set_result(None)  # the slot changes hands, running stays
                self._on_change(self.running, len(self._waiters))
                return
        self.running -= 1
        self._on_change(self.running, len(self._waiters))


class PrefixCache:
    """An LRU of prompt-prefix hashes standing in for vLLM's automatic prefix caching.

    It feeds the prefix-cache counters and `cached_tokens`, and cached tokens skip prefill
    time, so prefix-aware routing has a measurable effect against the simulator too.
    """

    def __init__(self, capacity: int = 8192) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[bytes, None] = OrderedDict()

    def lookup_insert(self, prompts: list[list[tuple[bytes, int]]]) -> int:
        """Cached tokens over all prompts (longest cached prefix of each), then cache them all."""
        lru, hits = self._lru, 0
        for prefixes in prompts:
            hits += max((count for digest, count in prefixes if digest in lru), default=0)
            for digest, _ in prefixes:
                lru[digest] = None
                lru.move_to_end(digest)
        while len(lru) > self.capacity:
            lru.popitem(last=False)
        return hits
