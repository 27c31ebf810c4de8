"""How many lines the lane keeps on one model's pool: a limit that grows by one line per
tick while it, not the pool's room, holds the lane back, and halves each time a scrape
shows interactive load in a replica's reserve (additive increase, multiplicative decrease:
TCP's congestion window). The headroom alone would refill a pool to the level that just
caused pressure at the next calm scrape, and so again and again; the limit settles the
lane below that level and approaches it again slowly. New lines are capped per tick as
well, so that lines ending together are not replaced in one burst."""

from __future__ import annotations

from gateway.batch.headroom import View


class Pace:
    def __init__(self, per_tick: int, most: int) -> None:
        self.per_tick = per_tick
        self.most = most  # the process's max_in_flight: no use growing past it
        self.limit = min(per_tick, most)  # the first tick may take a tick's worth
        self._tick = -1  # the tick `_added` and growth refer to
        self._added = 0
        self._grown = False

    def room(self, tick: int, lines: int, view: View) -> int:
        """New lines the model's pool may take now, with `lines` of the lane's on it."""
        if tick != self._tick:
            self._tick, self._added, self._grown = tick, 0, False
        others = min(view.free, self.per_tick - self._added)  # what else bounds it now
        if view.pressure:  # halved from what ran, not from a limit left unused
            self.limit = max(1, min(self.limit, lines) // 2)
        elif not self._grown and 0 <= self.limit - lines < others:
            # Only a limit that holds the lane back grows; lines above it (it just
            # halved) first run out.
            self.limit, self._grown = min(self.most, self.limit + 1), True
        return max(0, min(others, self.limit - lines))

    def took(self, count: int) -> None:
        self._added += count
