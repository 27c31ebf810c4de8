"""Streaming estimators for the scoreboard: windowed quantiles and a peak-sensitive EWMA.

Both take `now` from the caller (monotonic seconds) so tests can drive time, and both
forget: samples leave the window, and the EWMA decays while no samples arrive, so old
data never pins a deployment's reputation.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque


class WindowedQuantiles:
    """The samples of the last `window_s` seconds (at most `cap`), quantiles on demand.

    The values are also kept sorted, by insertion (bisect: a C memmove of at most `cap`
    floats), so a quantile is one index even when every request adds a sample and reads
    one (routing does both, at the full request rate).
    """

    __slots__ = ("_samples", "_sorted", "cap", "window_s")

    def __init__(self, window_s: float = 60.0, cap: int = 512) -> None:
        self.window_s = window_s
        self.cap = cap
        self._samples: deque[tuple[float, float]] = deque()
        self._sorted: list[float] = []

    def add(self, value: float, now: float) -> None:
        self._samples.append((now, value))
        insort(self._sorted, value)
        if len(self._samples) > self.cap:
            self._forget(self._samples.popleft()[1])

    def _forget(self, value: float) -> None:
        values = self._sorted
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

    def count(self, now: float) -> int:
        self._prune(now)
        return len(self._samples)

    def quantile(self, q: float, now: float) -> float | None:
        self._prune(now)
        values = self._sorted
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
        if self.value is None or sample > self.value:
            self.value = sample
        else:
            w = math.exp(-max(0.0, now - self._stamp) / self.decay_s)
            self.value = self.value * w + sample * (1 - w)
        self._stamp = now

    def get(self, now: float) -> float | None:
        if self.value is None:
            return None
        return self.value * math.exp(-max(0.0, now - self._stamp) / (self.decay_s * 6))


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
        self.value = self.get(now) * 0.9 + (0.1 if bad else 0.0)
        self._stamp = now

    def get(self, now: float) -> float:
        return self.value * math.exp(-max(0.0, now - self._stamp) / self.decay_s)
