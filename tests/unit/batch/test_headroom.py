"""How many lines a pool may take, from what the scoreboard holds of its replicas: up to
`fill` x capacity less interactive load and no further than each replica's reserve, none
while a replica's free slots are below its reserve (and the lane's lines preempted once
per scrape), none while the predicted TTFT is too close to the SLO."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gateway.batch.headroom import PROBE, Headroom
from gateway.canonical import Deployment, Target
from gateway.config import parse_config
from policies.scoreboard import Scoreboard

REPLICAS = [Deployment(id=f"gpu/r{i}", model="chat", dialect="openai",
                       target=Target("http://r/v1", "m"), pool="gpu") for i in range(2)]
PROVIDER = Deployment(id="cloud", model="api", dialect="openai",
                      target=Target("http://c/v1", "m"))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def headroom(**batch: Any) -> tuple[Headroom, Scoreboard, Clock]:
    clock = Clock()
    board = Scoreboard(clock)
    cfg = parse_config({
        "providers": [{"name": "cloud", "base_url": "http://c/v1"}],
        "pools": [{"name": "gpu", "endpoints": ["http://r0", "http://r1"]}],
        "models": {"chat": {"deployments": [{"target": "gpu", "model": "m"}]},
                   "api": {"deployments": [{"target": "cloud", "model": "m"}]}},
        "routing": {"slo_ttft_ms": 400}, "batch": batch})
    registry = SimpleNamespace(models={"chat": REPLICAS, "api": [PROVIDER]})
    return Headroom(board, registry, cfg), board, clock  # type: ignore[arg-type]


def scrape(board: Scoreboard, clock: Clock, running: float | tuple[float, float],
           waiting: float = 0.0, slots: float = 16) -> None:
    """Every replica scraped: `running` on each, or (first's, second's)."""
    clock.now += 0.5
    each = running if isinstance(running, tuple) else (running,) * len(REPLICAS)
    for dep, run in zip(REPLICAS, each, strict=True):
        board.stats(dep).record_scrape(waiting=waiting, running=run,
                                       kv_usage=run / slots, prefix_hit_rate=None,
                                       now=clock.now)


def test_fills_to_the_fill_share_less_interactive_load() -> None:
    room, board, clock = headroom(fill=0.75)
    assert room.view("chat", 0).free == 0  # no scrape yet: nothing known, nothing sent
    scrape(board, clock, running=0)
    assert room.view("chat", 0).free == 2 * PROBE  # capacity unknown: a probe each
    scrape(board, clock, running=4)  # 4 interactive of 16 slots on each replica
    assert room.view("chat", 0).free == 24 - 8
    assert room.view("chat", 10).free == 24 - 8 - 10  # its own lines since count
    scrape(board, clock, running=10)  # 10 each: 6 of them the lane's lines (seen)
    view = room.view("chat", 12)
    assert view.free == 24 - 8 - 12
    scrape(board, clock, running=12)  # interactive load rose: 12 - 6 each
    assert room.view("chat", 12).free == 0


def test_a_queue_stops_it_and_preempts_once_per_scrape() -> None:
    room, board, clock = headroom(reserve=0)
    scrape(board, clock, running=16, waiting=3)
    first = room.view("chat", 10)
    assert (first.free, first.preempt, first.pressure) == (0, 6, True)
    again = room.view("chat", 10)  # the same scrape: already answered
    assert (again.free, again.preempt, again.pressure) == (0, 0, False)
    scrape(board, clock, running=16, waiting=1)
    assert room.view("chat", 4).preempt == 2
    room, board, clock = headroom(preempt=False)
    scrape(board, clock, running=16, waiting=3)
    view = room.view("chat", 10)
    assert (view.preempt, view.pressure) == (0, True)  # no cancelling, still a back-off


def test_a_replica_in_its_reserve_stops_it_before_a_queue() -> None:
    # 16 slots each, a reserve of 4: 13 running on one replica leaves it 3 free.
    room, board, clock = headroom(reserve=0.25, fill=1.0)
    scrape(board, clock, running=(13, 2))
    view = room.view("chat", 6)
    assert (view.free, view.preempt, view.pressure) == (0, 1, True)
    assert room.view("chat", 5).pressure is False  # once per scrape
    scrape(board, clock, running=(12, 2))  # 4 free on each: none lacking, and the
    # second's 14 - 4 = 10 beyond its reserve, less the lane's lines added since
    assert room.view("chat", 5).free == 10
    assert room.view("chat", 8).free == 10 - 3


def test_the_reserve_outranks_the_fill_share() -> None:
    room, board, clock = headroom(reserve=0.25, fill=1.0)
    scrape(board, clock, running=4)  # 12 free each, 8 of them beyond the reserve
    assert room.view("chat", 0).free == 16  # not the fill's 32 - 8
    room, board, clock = headroom(reserve=0.25, fill=0.5)
    scrape(board, clock, running=4)
    assert room.view("chat", 0).free == 16 - 8  # the fill's share is the smaller here


def test_a_slow_prediction_stops_it() -> None:
    room, board, clock = headroom(ttft_fraction=0.5)
    scrape(board, clock, running=2)
    for dep in REPLICAS:  # served at 300 ms: above half the 400 ms SLO
        stats = board.stats(dep)
        for _ in range(10):
            board.first_token(stats, 0.3)
    view = room.view("chat", 0)
    assert (view.free, view.reason) == (0, "predicted ttft 300ms")


def test_models_without_a_pool_run_a_few_at_a_time() -> None:
    room, _, _ = headroom(provider_in_flight=5)
    assert room.view("api", 3).free == 2
