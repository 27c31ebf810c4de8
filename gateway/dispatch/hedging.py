"""TTFT hedging: when a stream's first token is late, ask a second deployment too and keep
whichever answers first ("The Tail at Scale", Dean and Barroso, 2013).

The delay is the lowest live P95 TTFT among the plan's candidates (with a floor and a
ceiling): by then the best alternative has usually answered, so a first token still
missing is a tail event worth a second request. (The hedged deployment's own P95 would
never hedge a replica that is slow all the time, whose own P95 is its slowness.) With too
few samples to trust, the ceiling is the delay. Hedging starts a task per request, so it
is opt-in per model; the hedge counts against the retry budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.canonical import Deployment
from policies.scoreboard import Scoreboard

MIN_SAMPLES = 5  # fewer TTFT samples than this are no basis for a P95

T = TypeVar("T")

# Cancelled losers, referenced until they have cleaned up (the loop holds tasks weakly).
_reaping: set[asyncio.Future[Any]] = set()


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    quantile: float = 0.95
    min_delay_s: float = 0.05
    max_delay_s: float = 2.0


def hedge_delay(board: Scoreboard, candidates: Sequence[Deployment],
                settings: HedgeSettings) -> float:
    now = board.clock()
    best: float | None = None
    for dep in candidates:
        ttft = board.stats(dep).ttft
        if ttft.count(now) >= MIN_SAMPLES:
            q = ttft.quantile(settings.quantile, now)
            if q is not None and (best is None or q < best):
                best = q
    if best is None:
        return settings.max_delay_s
    return min(settings.max_delay_s, max(settings.min_delay_s, best))


async def race(first: Awaitable[T], delay_s: float,
               launch_second: Callable[[], Awaitable[T] | None],
               discard: Callable[[T], None]) -> tuple[T, int]:
    """(result, which: 0 or 1). Runs `first`; if it has not finished after `delay_s`,
    `launch_second()` (None: no hedge after all) runs beside it. The first success wins
    and the other is cancelled at once; a second success in the same instant is
    `discard`ed. When every attempt fails, the last failure is raised."""
    tasks: list[asyncio.Future[T]] = [asyncio.ensure_future(first)]
    winner: int | None = None
    try:
        done, _ = await asyncio.wait(tasks, timeout=delay_s)
        if not done:
            second = launch_second()
            if second is not None:
                tasks.append(asyncio.ensure_future(second))
        pending: set[asyncio.Future[T]] = set(tasks)
        last: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for i, task in enumerate(tasks):
                if task in done:
                    err = task.exception()
                    if err is None:
                        winner = i
                        return task.result(), i
                    last = err
        assert last is not None
        raise last
    finally:
        for i, task in enumerate(tasks):
            if i == winner:
                continue
            if not task.done():
                task.cancel()
                _reap(task, discard)
            elif not task.cancelled() and task.exception() is None:
                discard(task.result())


def _reap(task: asyncio.Future[T], discard: Callable[[T], None]) -> None:
    _reaping.add(task)

    def done(t: asyncio.Future[T]) -> None:
        _reaping.discard(t)
        # It may have won the same instant it was cancelled: close what it opened.
        if not t.cancelled() and t.exception() is None:
            discard(t.result())

    task.add_done_callback(done)
