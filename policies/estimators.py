"""Streaming estimators for the scoreboard: windowed quantiles and a peak-sensitive EWMA.

Both take `now` from the caller (monotonic seconds) so tests can drive time, and both
forget: samples leave the window, and the EWMA decays while no samples arrive, so old
data never pins a deployment's reputation.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque

_exp = math.exp


def _decay(age: float, decay_s: float) -> float:
    """exp(-age / decay_s), 1 for an age below 0 (a clock read before the last stamp)."""
    return _exp(-age / decay_s) if age > 0 else 1.0


class WindowedQuantiles:
    """The samples of the last `window_s` seconds (at most `cap`), quantiles on demand.

    While the window is read, its values are also kept sorted, by insertion (bisect: a C
    memmove of at most `cap` floats), so a quantile is one index even when every request
    adds a sample and reads one (routing does both, at the full request rate). A window
    not read for `cap` samples (most are read only by the console, or a stall check)
    stops sorting on every add, and sorts once when it is read again.
    """

    __slots__ = ("_samples", "_sorted", "_unread", "cap", "window_s")

    def __init__(self, window_s: float = 60.0, cap: int = 512) -> None:
        self.window_s = window_s
        self.cap = cap
        self._samples: deque[tuple[float, float]] = deque()
        self._sorted: list[float] | None = []  # None: not kept until the next read
        self._unread = 0  # samples added since the last read

    def add(self, value: float, now: float) -> None:
        samples = self._samples
        samples.append((now, value))
        values = self._sorted
        if values is None:
            if len(samples) > self.cap:
                samples.popleft()
            return
        insort(values, value)
        if len(samples) > self.cap:
            del values[bisect_left(values, samples.popleft()[1])]
        self._unread += 1
        if self._unread > self.cap:
            self._sorted = None

    def _forget(self, value: float) -> None:
        values = self._sorted
        if values is not None:
            del values[bisect_left(values, value)]

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        samples = self._samples
        while samples and samples[0][0] < horizon:
            self._forget(samples.popleft()[1])

    def drop_after(self, t: float) -> None:
        """Forget the samples added after `t` (found to be suspect since)."""
        samples = self._samples
        while samples and samples[-1][0] > t:
            self._forget(samples.pop()[1])

    def first_above(self, value: float) -> float | None:
        """When the oldest sample over `value` was added (None: none is); O(samples)."""
        return next((t for t, v in self._samples if v > value), None)

    def count(self, now: float) -> int:
        self._prune(now)
        return len(self._samples)

    def quantile(self, q: float, now: float) -> float | None:
        self._prune(now)
        self._unread = 0
        values = self._sorted
        if values is None:
            values = self._sorted = sorted([v for _, v in self._samples])
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]

    def mean(self, now: float) -> float | None:
        self._prune(now)
        if not self._samples:
            return None
        return sum(v for _, v in self._samples) / len(self._samples)


class PeakEWMA:
    """Finagle/Envoy's peak EWMA of latency: jumps up to a slower sample at once, decays
    down smoothly (time constant `decay_s`), and decays toward zero while idle so a
    deployment that was slow once gets probed again."""

    __slots__ = ("_stamp", "decay_s", "value")

    def __init__(self, decay_s: float = 10.0) -> None:
        self.decay_s = decay_s
        self.value: float | None = None
        self._stamp = 0.0

    def observe(self, sample: float, now: float) -> None:
        value = self.value
        if value is None or sample > value:
            self.value = sample
        else:
            w = _decay(now - self._stamp, self.decay_s)
            self.value = value * w + sample * (1 - w)
        self._stamp = now

    def get(self, now: float) -> float | None:
        if self.value is None:
            return None
        return self.value * _decay(now - self._stamp, self.decay_s * 6)


class DecayingRate:
    """Fraction of recent events that were bad (errors, timeouts), decaying with time."""

    __slots__ = ("_stamp", "decay_s", "value")

    def __init__(self, decay_s: float = 30.0) -> None:
        self.decay_s = decay_s
        self.value = 0.0
        self._stamp = 0.0

    def observe(self, bad: bool, now: float) -> None:
        # An EWMA with alpha 0.1 per event (one failure is 0.1; seven in a row pass 0.5),
        # on top of the time decay that forgets an old incident.
        self.value = self.value * _decay(now - self._stamp, self.decay_s) * 0.9 + (
            0.1 if bad else 0.0)
        self._stamp = now

    def get(self, now: float) -> float:
        return self.value * _decay(now - self._stamp, self.decay_s)


class DecayingMean:
    """A time-weighted mean: each sample weighs exp(-age / decay_s), so the mean follows
    the recent level without a window to keep. `weight` is about how many recent samples
    it rests on."""

    __slots__ = ("_stamp", "_sum", "decay_s", "weight")

    def __init__(self, decay_s: float = 30.0) -> None:
        self.decay_s = decay_s
        self.weight = 0.0
        self._sum = 0.0
        self._stamp = 0.0

    def add(self, value: float, now: float, weight: float = 1.0) -> None:
        w = _decay(now - self._stamp, self.decay_s)
        self.weight = self.weight * w + weight
        self._sum = self._sum * w + value * weight
        self._stamp = now

    def get(self) -> float | None:
        return self._sum / self.weight if self.weight > 0 else None


class PrefillFit:
    """Time to first token against prompt length: a least-squares line over recent
    samples (each weighs exp(-age / decay_s)), and each size bucket's mean prompt length.
    The slope is the replica's prefill time per prompt token, learned across every size
    it served, so a size it has barely served can be judged from the sizes it has."""

    __slots__ = ("_buckets", "_stamp", "_w", "_x", "_xx", "_xy", "_y", "decay_s")

    MIN_WEIGHT = 5.0  # fewer samples than this are no line
    MIN_SPREAD = 64.0  # tokens: prompts all about one size give no slope

    def __init__(self, buckets: int, decay_s: float = 60.0) -> None:
        self.decay_s = decay_s
        # Per bucket: weight, weighted tokens, when last added to. A bucket's mean is the
        # same whenever both sums decay alike, so each decays only when it is added to.
        self._buckets = [[0.0, 0.0, 0.0] for _ in range(buckets)]
        self.reset()

    def reset(self) -> None:
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self._stamp = 0.0
        for b in self._buckets:
            b[0] = b[1] = b[2] = 0.0

    def add(self, tokens: int, seconds: float, bucket: int, now: float) -> None:
        d = math.exp(min(0.0, self._stamp - now) / self.decay_s)
        self._stamp = now
        x = float(tokens)
        self._w = self._w * d + 1.0
        self._x = self._x * d + x
        self._y = self._y * d + seconds
        self._xx = self._xx * d + x * x
        self._xy = self._xy * d + x * seconds
        b = self._buckets[bucket]
        d = math.exp(min(0.0, b[2] - now) / self.decay_s)
        b[0] = b[0] * d + 1.0
        b[1] = b[1] * d + x
        b[2] = now

    def slope(self) -> float | None:
        """Seconds per prompt token (never negative); None without enough spread."""
        w = self._w
        if w < self.MIN_WEIGHT:
            return None
        mx = self._x / w
        var = self._xx / w - mx * mx
        if var < self.MIN_SPREAD * self.MIN_SPREAD:
            return None
        return max(0.0, (self._xy / w - mx * self._y / w) / var)

    def mean_tokens(self, bucket: int) -> float | None:
        w, x, _ = self._buckets[bucket]
        return x / w if w > 1e-9 else None


class SlotRate:
    """How fast a replica frees its slots: completions per second per busy slot, from its
    own completion counter and running count between two scrapes (vLLM's
    `request_success_total` and `num_requests_running`), decayed over `decay_s`. Counts
    every client's requests, not only ours. Its inverse is the mean time a request holds
    a slot."""

    __slots__ = ("_busy", "_count", "_done", "_running", "_stamp", "decay_s")

    MIN_COMPLETIONS = 3.0  # fewer than this are no rate

    def __init__(self, decay_s: float = 10.0) -> None:
        self.decay_s = decay_s
        self._count: float | None = None
        self._running = 0.0
        self._stamp = 0.0
        self._done = 0.0
        self._busy = 0.0  # slot-seconds

    def scrape(self, completed_total: float | None, running: float, now: float) -> None:
        prev, dt = self._count, now - self._stamp
        # (A count lower than the last: the replica restarted; start over from it.)
        if (completed_total is not None and prev is not None and dt > 0
                and completed_total >= prev):
            w = math.exp(-dt / self.decay_s)
            self._done = self._done * w + (completed_total - prev)
            self._busy = self._busy * w + (running + self._running) / 2 * dt
        self._count, self._running, self._stamp = completed_total, running, now

    def per_slot(self) -> float | None:
        if self._done < self.MIN_COMPLETIONS or self._busy <= 0:
            return None
        return self._done / self._busy
