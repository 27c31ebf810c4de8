"""The live view across workers and replicas, through the store.

Every gateway process runs a `Publisher`: once a second it looks for the watch flag
(`turnout:console:watching`, one GET). While the flag is there, a console is open
somewhere: the process's recorder switches on and is drained four times a second,
and once a second its snapshot (`snapshot.py`, a few KB of JSON) is written into the
hash `turnout:console:snapshots` under the process's id (one HSET). While it is not,
that GET is all the console costs a process, besides polling its own breakers for
circuit transitions.

A process serving consoles runs one `Feed` for all of them (however many tabs are open,
one loop): while any is connected it renews the watch flag, reads every process's
latest snapshot (one HGETALL), merges them into a frame (`merge.py`) and hands it to
each connection, which streams it as a server-sent event. Frames carry only decisions
and circuit transitions the feed had not seen; a connection starts with the feed's
recent history (`hello`). With the in-memory store there is one process, and the same
code runs against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from gateway.console.merge import DECISIONS_SHOWN, INCIDENTS_SHOWN, merge, point
from gateway.console.recorder import Recorder
from gateway.console.snapshot import CircuitWatch, SnapshotBuilder
from gateway.store import Store, StoreUnavailable, layout

log = logging.getLogger("turnout.console")

INTERVAL_S = 1.0  # a snapshot, and a frame, a second
DRAINS = 4  # recorder drains per interval: decisions sampled from a quarter second each
WATCH_TTL_S = 3 * INTERVAL_S  # the flag outlives a missed renewal, not a closed console
FORGET_S = 60.0  # a process silent this long has gone: its snapshot is deleted
HISTORY = 600  # chart points kept by a feed: ten minutes
PER_FRAME = 25  # new decisions a frame carries at most


class Publisher:
    def __init__(self, store: Store, builder: SnapshotBuilder, recorder: Recorder,
                 watch: CircuitWatch) -> None:
        self.store = store
        self.builder = builder
        self.recorder = recorder
        self.watch = watch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await _cancel(self._task)
        if self.recorder.watching:  # leave the view at once rather than after STALE_S
            with contextlib.suppress(StoreUnavailable):
                await self.store.hdel(layout.CONSOLE_SNAPSHOTS, self.builder.proc)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except StoreUnavailable:
                self._watching(False)
                await asyncio.sleep(INTERVAL_S)
            except Exception:  # the console must never take a process down
                log.exception("console publisher failed; retrying")
                await asyncio.sleep(INTERVAL_S)

    async def tick(self) -> None:
        """One interval: look for the flag, publish while it is there."""
        self.watch.poll(self.builder.circuits(), time.time())
        self._watching(await self.store.get(layout.CONSOLE_WATCHING) is not None)
        if not self.recorder.watching:
            await asyncio.sleep(INTERVAL_S)
            return
        step = INTERVAL_S / DRAINS
        for _ in range(DRAINS):
            await asyncio.sleep(step)
            self.recorder.drain(step)
        await self.publish()

    async def publish(self) -> None:
        snap = self.builder.build()
        await self.store.hset(layout.CONSOLE_SNAPSHOTS, self.builder.proc, orjson.dumps(snap))

    def _watching(self, on: bool) -> None:
        if on == self.recorder.watching:
            return
        self.recorder.watching = on
        if not on:  # rates start afresh next time; nothing is held for nobody
            self.recorder.drain(0.0)
            self.builder.forget()


class Feed:
    """Frames for the consoles connected to this process, made by one loop while any is."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clients = 0
        self.frame: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_SHOWN)
        self.incidents: deque[dict[str, Any]] = deque(maxlen=INCIDENTS_SHOWN)
        self._seen: set[str] = set()  # ids of decisions and transitions already sent
        self._seen_order: deque[str] = deque(maxlen=20 * (DECISIONS_SHOWN + INCIDENTS_SHOWN))
        self._next = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def close(self) -> None:
        """The server is stopping: every stream ends now, so none holds up its drain."""
        self.closed = True
        self._next.set()

    def hello(self) -> dict[str, Any]:
        """What a new connection starts from."""
        return {"history": list(self.history), "decisions": list(self.decisions),
                "incidents": list(self.incidents), "frame": self.frame}

    async def frames(self) -> AsyncGenerator[dict[str, Any], None]:
        """Each new frame, until the caller stops iterating."""
        self.clients += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            while not self.closed:
                ready = self._next
                await ready.wait()
                if self.closed:
                    return
                assert self.frame is not None
                yield self.frame
        finally:
            self.clients -= 1

    async def stop(self) -> None:
        await _cancel(self._task)

    async def _run(self) -> None:
        while self.clients > 0 and not self.closed:
            started = time.monotonic()
            try:
                frame = await self.step()
            except StoreUnavailable:
                frame = {"at": time.time(), "error": "the store is unavailable"}
            except Exception:
                log.exception("console feed failed")
                frame = {"at": time.time(), "error": "internal error (see the gateway's log)"}
            self.frame = frame
            ready, self._next = self._next, asyncio.Event()
            ready.set()
            await asyncio.sleep(max(0.0, INTERVAL_S - (time.monotonic() - started)))

    async def step(self) -> dict[str, Any]:
        """Renew the flag, read every process's snapshot, merge: the next frame."""
        store = self.store
        await store.set(layout.CONSOLE_WATCHING, b"1", ttl_s=WATCH_TTL_S)
        now = time.time()
        snaps = []
        for proc, raw in (await store.hgetall(layout.CONSOLE_SNAPSHOTS)).items():
            snap = orjson.loads(raw)
            if now - snap.get("at", 0.0) > FORGET_S:
                await store.hdel(layout.CONSOLE_SNAPSHOTS, proc)
            else:
                snaps.append(snap)
        frame = merge(snaps, now)
        # However many processes sample, a frame brings a readable number of decisions.
        frame["decisions"] = self._fresh(frame["decisions"], self.decisions)[-PER_FRAME:]
        frame["incidents"] = self._fresh(frame["incidents"], self.incidents)
        frame["point"] = point(frame)  # what the charts keep
        self.history.append(frame["point"])
        return frame

    def _fresh(self, items: list[dict[str, Any]], kept: deque[dict[str, Any]]
               ) -> list[dict[str, Any]]:
        new = [item for item in items if item["id"] not in self._seen]
        order = self._seen_order
        for item in new:
            kept.append(item)
            if len(order) == order.maxlen:  # remembered far longer than any is published
                self._seen.discard(order[0])
            order.append(item["id"])
            self._seen.add(item["id"])
        return new


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
