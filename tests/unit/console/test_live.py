"""The live view across processes: each publishes its snapshot through the store while
a console is open, and a feed merges them, in memory and over a real Redis; snapshots'
rates and circuit transitions; nothing published while nobody watches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.console import live
from gateway.console.live import Feed, Publisher
from gateway.console.recorder import Recorder
from gateway.console.snapshot import CircuitWatch, SnapshotBuilder
from gateway.store import MemoryStore, Store, layout
from policies.scoreboard import Scoreboard
from tests.support.console import deployment, settled

DEP = deployment("gpu/10.0.0.1:8000")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def process(name: str, store: Store, requests: int, board: Scoreboard | None = None
            ) -> Publisher:
    board = board or Scoreboard()
    for _ in range(requests):
        stats = board.started(DEP)
        board.succeeded(stats, e2e_s=0.05, streamed=False)
    recorder = Recorder(name)
    builder = SnapshotBuilder(name, lambda: {"chat": [DEP]}, board, None, recorder,
                              CircuitWatch(name))
    return Publisher(store, builder, recorder, builder.watch)


async def next_frame(feed: Feed, ready: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        async for frame in feed.frames():
            if ready(frame):
                return frame
    raise AssertionError("the feed ended")


async def test_processes_meet_in_the_store(console_store: Store,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = console_store
    await store.delete(layout.CONSOLE_SNAPSHOTS)
    await store.delete(layout.CONSOLE_WATCHING)
    monkeypatch.setattr(live, "INTERVAL_S", 0.05)
    publishers = [process("p1", store, 5), process("p2", store, 7)]
    for p in publishers:
        p.start()
    feed = Feed(store)
    try:
        assert await store.get(layout.CONSOLE_WATCHING) is None
        # Each process's second snapshot has rates (its first has no interval yet).
        frame = await next_frame(feed, lambda f: f.get("processes") == 2
                                 and f["models"][0]["rps"] is not None)
        assert frame["models"][0]["requests"] == 12
        assert all(p.recorder.watching for p in publishers)  # the flag reached both
        assert frame["point"]["models"]["chat"]["rps"] == 0.0  # nothing new since
        assert feed.hello()["history"]
    finally:
        await feed.stop()
        for p in publishers:
            await p.stop()
    assert not await store.hgetall(layout.CONSOLE_SNAPSHOTS)  # each left on stopping


async def test_nothing_is_published_while_nobody_watches(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(live, "INTERVAL_S", 0.01)
    store = MemoryStore()
    p = process("p1", store, 3)
    for _ in range(3):
        await p.tick()
    assert not p.recorder.watching and not await store.hgetall(layout.CONSOLE_SNAPSHOTS)
    await store.set(layout.CONSOLE_WATCHING, b"1", ttl_s=5)
    await p.tick()
    assert p.recorder.watching and list(await store.hgetall(layout.CONSOLE_SNAPSHOTS)) == ["p1"]
    p.recorder.settled(*settled())  # held until the flag goes, then let go
    await store.delete(layout.CONSOLE_WATCHING)
    await p.tick()
    assert not p.recorder.watching and p.recorder.drain(1.0) == 0


def test_snapshot_rates_and_circuit_transitions() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    recorder = Recorder("p")
    builder = SnapshotBuilder("p", lambda: {"chat": [DEP]}, board, None, recorder,
                              CircuitWatch("p"))
    first = builder.build(wall=1.0)
    assert first["deployments"][DEP.id]["rps"] is None  # no interval yet
    for _ in range(20):
        stats = board.started(DEP)
        board.failed(stats, "503")
    clock.now += 2.0
    second = builder.build(wall=3.0)
    row = second["deployments"][DEP.id]
    assert row["rps"] == 10.0 and row["fps"] == 10.0 and row["requests"] == 20
    assert row["replica"]["stale"] and row["circuit"] == "closed"
    assert second["seq"] == first["seq"] + 1 and second["interval_s"] == 2.0

    watch = CircuitWatch("p")
    watch.poll({DEP.id: {"state": "closed"}}, 1.0)
    watch.poll({DEP.id: {"state": "open", "last_failure": "503"}}, 2.0)
    watch.poll({DEP.id: {"state": "open"}}, 3.0)
    watch.poll({DEP.id: {"state": "half_open"}}, 4.0)
    assert [(e["from"], e["to"], e["t"]) for e in watch.events] == [
        ("closed", "open", 2.0), ("open", "half_open", 4.0)]
    assert watch.events[0]["reason"] == "503"
