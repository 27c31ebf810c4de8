"""Event counts over a sliding time window, for the retry budget and circuit breakers.

A ring of fixed-width buckets: O(1) per event and constant memory whatever the traffic
(a log of timestamps would grow with it). The window covers the current, partly
elapsed bucket and the `buckets - 1` before it, so it slides in steps of one bucket.
Time comes from the caller (monotonic seconds), so tests can drive it.
"""

from __future__ import annotations

_NEVER = -(1 << 62)  # an epoch no clock reaches: the slot is empty


class SlidingCounts:
    """Counts of `series` kinds of events (e.g. requests and retries) over `window_s`."""

    __slots__ = ("_counts", "_cur", "_cur_end", "_cur_start", "_epochs", "_n", "_width")

    def __init__(self, window_s: float, series: int = 2, buckets: int = 10) -> None:
        if window_s <= 0 or buckets < 1 or series < 1:
            raise ValueError("window_s, series and buckets must be positive")
        self._n = buckets
        self._width = window_s / buckets
        self._epochs = [_NEVER] * buckets  # which bucket epoch each slot currently holds
        self._counts = [[0] * series for _ in range(buckets)]
        # The bucket written last and its time span: most adds are two comparisons.
        self._cur = self._counts[0]
        self._cur_start = self._cur_end = 0.0

    def add(self, now: float, series: int, n: int = 1) -> None:
        if not self._cur_start <= now < self._cur_end:
            self._roll(now)
        self._cur[series] += n

    def _roll(self, now: float) -> None:
        epoch = int(now // self._width)
        slot = epoch % self._n
        counts = self._counts[slot]
        if self._epochs[slot] != epoch:  # the slot held an epoch that has left the window
            self._epochs[slot] = epoch
            for i in range(len(counts)):
                counts[i] = 0
        self._cur = counts
        self._cur_start, self._cur_end = epoch * self._width, (epoch + 1) * self._width

    def totals(self, now: float) -> list[int]:
        epoch = int(now // self._width)
        out = [0] * len(self._counts[0])
        for slot_epoch, counts in zip(self._epochs, self._counts, strict=True):
            if 0 <= epoch - slot_epoch < self._n:
                for i, c in enumerate(counts):
                    out[i] += c
        return out

    def clear(self) -> None:
        self._epochs = [_NEVER] * self._n
        self._cur_start = self._cur_end = 0.0
