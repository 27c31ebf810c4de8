"""The lane's pace on a pool: a limit on its lines that grows by one a tick while it holds
the lane back, halves at each scrape that shows interactive load in a replica's reserve
(and stays there until the lines above it have run out), and at most `max_new_per_tick`
new lines a tick; driven through `Lane._dispatch` with a scripted headroom."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from gateway.batch.headroom import View
from gateway.batch.lane import Lane, _Batch
from gateway.batch.line_run import Verdict
from gateway.batch.pace import Pace
from gateway.batch.settings import BatchConfig
from gateway.store.batch_base import Taken
from policies.keys import ANONYMOUS

ROOM = View(free=100)
PRESSED = View(pressure=True)


def test_it_grows_a_line_a_tick_only_while_it_holds_the_lane_back() -> None:
    pace = Pace(per_tick=4, most=256)
    assert pace.room(1, 0, ROOM) == 4  # the first tick: a tick's worth
    assert pace.room(2, 4, ROOM) == 1  # 4 of 4 in use: 5
    assert pace.room(2, 5, ROOM) == 0  # once a tick
    assert pace.room(3, 3, View(free=1)) == 1  # the pool's room holds it back: no growth
    assert pace.room(4, 5, View(free=0, reason="full")) == 0
    assert pace.limit == 5
    assert pace.room(5, 2, ROOM) == 4  # 3 ended: refilled, and grown (6): it binds
    assert pace.room(6, 6, ROOM) == 1
    assert pace.limit == 7


def test_it_halves_from_what_runs_and_waits_for_the_lines_above_it() -> None:
    pace = Pace(per_tick=8, most=256)
    pace.limit = 40
    assert pace.room(1, 30, PRESSED) == 0
    assert pace.limit == 15  # half of the 30 that ran, not of 40
    assert pace.room(2, 30, ROOM) == 0  # 15 above the limit: no growth, no new lines
    assert pace.room(3, 15, ROOM) == 1  # run down to it: grows again
    pace.room(4, 16, PRESSED)
    pace.room(5, 8, PRESSED)
    pace.room(6, 0, PRESSED)
    assert pace.limit == 1  # never 0: a calm pool is found again


def test_new_lines_a_tick_are_capped() -> None:
    pace = Pace(per_tick=8, most=256)
    pace.limit = 64
    first = pace.room(1, 0, ROOM)
    pace.took(first)
    assert (first, pace.room(1, first, ROOM)) == (8, 0)  # a second batch, the same tick
    assert pace.room(2, 8, ROOM) == 8


class Store:
    async def batch_take(self, team: str, bid: str, count: int, lease_ms: int,
                         token: str) -> Taken:
        return Taken([f"{i}:{token}" for i in range(count)])

    async def batch_line(self, end: Any) -> bool:
        return True


class Runner:
    """Lines run until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, *args: Any, **kwargs: Any) -> Verdict:
        await self.release.wait()
        return Verdict(b"-")


class Headroom:
    def __init__(self) -> None:
        self.next = ROOM

    def view(self, model: str, lane_lines: int) -> View:
        view, self.next = self.next, ROOM  # pressure once, as a scrape shows it
        return view


async def test_the_lane_ramps_up_backs_off_and_regrows() -> None:
    runner, room = Runner(), Headroom()
    cfg = BatchConfig.model_validate({"max_new_per_tick": 4})
    lane = Lane(Store(), None, runner, room, cfg, None,  # type: ignore[arg-type]
                principal_ttl_s=60)
    b = _Batch("team", "b1", "", "/v1/chat/completions", time.time(), time.time() + 3600,
               status="in_progress", model="chat", principal=ANONYMOUS,
               principal_at=time.monotonic())
    b.parsed = SimpleNamespace(line=lambda i: SimpleNamespace(custom_id=f"c{i}"))  # type: ignore[assignment]
    lane._batches[("team", "b1")] = b

    async def tick() -> int:
        await lane._dispatch()
        await asyncio.sleep(0)  # the lines start, or end
        return lane.running

    # Room for 100: not 100 at once, but 4, then a line a tick.
    assert [await tick() for _ in range(5)] == [4, 5, 6, 7, 8]
    room.next = PRESSED  # a scrape shows interactive load in a reserve: limit 8 -> 4
    assert [await tick() for _ in range(3)] == [8, 8, 8]  # no line while above it
    runner.release.set()
    await asyncio.sleep(0.01)  # all 8 end
    runner.release.clear()
    assert [await tick() for _ in range(3)] == [4, 5, 6]
    await lane.stop()
