"""The batch lane: a scheduler that runs batches' lines on the pools' spare capacity.

Every tick it asks `Headroom` how many lines each batch's pool can take now, takes no
more than its `Pace` for that pool allows (a limit that halves when interactive load
presses, and regrows a line a tick), leases that many from the store and runs each
through the lane's pipeline (`line_run.py`); every second it scans the active batches
for steps outside their lines (validation, expiry, cancellation, finalization:
`finish.py`); while it runs lines it renews their leases.
Lines are leased, not owned: a lane that dies leaves leases that lapse after `lease_s`,
and another lane (or this one, restarted) runs those lines again. A line's result and its
settlement are written together, once (`store/batch_base.py`).

The lane runs inside `turnout serve` (`batch.run_in_serve`) or as `turnout batch-worker`;
any number of lanes share the store's batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.accounting.accounts import get_team
from gateway.batch import lines
from gateway.batch.batches import FINAL, number, text
from gateway.batch.finish import Finisher
from gateway.batch.headroom import Headroom
from gateway.batch.line_run import LineRunner
from gateway.batch.pace import Pace
from gateway.batch.progress import LaneMetrics
from gateway.batch.settings import BatchConfig
from gateway.store import Store, StoreUnavailable, layout
from gateway.store.batch_base import LineEnd, member_index
from policies.keys import ANONYMOUS, KeyRecord, Principal

log = logging.getLogger("turnout.batch")

SCAN_S = 1.0  # how often the active batches are read
_ORPHAN_MS = 60_000  # a listing with no record after this long: its creation died


@dataclass(slots=True, eq=False)
class _Running:
    task: asyncio.Task[None]
    started: float
    spilled: bool


@dataclass(slots=True, eq=False)
class _Batch:
    team: str
    id: str
    key_id: str
    endpoint: str  # one of lines.ENDPOINTS
    created: float  # wall clock, s
    expires: float
    status: str = ""
    model: str = ""
    parsed: lines.InputFile | None = None
    running: dict[str, _Running] = field(default_factory=dict)  # lease member → its line
    attempts: dict[int, int] = field(default_factory=dict)  # upstream failures per line
    hold_until: float = 0.0  # monotonic: refused for now (rate limits), take nothing until
    busy: bool = False  # a step outside its lines is under way
    principal: Principal | None = None
    principal_at: float = 0.0


class Lane:
    def __init__(self, store: Store, finisher: Finisher, runner: LineRunner,
                 headroom: Headroom, cfg: BatchConfig, metrics: LaneMetrics | None,
                 principal_ttl_s: float) -> None:
        self.store = store
        self.finisher = finisher
        self.runner = runner
        self.headroom = headroom
        self.cfg = cfg
        self.metrics = metrics
        self.principal_ttl_s = principal_ttl_s
        self.lease_ms = int(cfg.lease_s * 1000)
        self._batches: dict[tuple[str, str], _Batch] = {}
        self._side: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._scan_at = self._renew_at = 0.0
        self._stopping = False
        self._paces: dict[str, Pace] = {}  # per model: how many lines it may have (pace.py)
        self._ticks = 0

    @property
    def running(self) -> int:
        return sum(len(b.running) for b in self._batches.values())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        log.info("batch lane started (fill %.2f, lease %gs)", self.cfg.fill, self.cfg.lease_s)

    async def stop(self) -> None:
        """Stop taking lines; lines under way are given back (run again by a lane)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        tasks = [r.task for b in self._batches.values() for r in b.running.values()]
        tasks += list(self._side)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _loop(self) -> None:
        while True:
            try:
                await self._step()
            except StoreUnavailable as err:
                log.warning("batch lane: store unavailable (%s)", err)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("batch lane step failed")
                await asyncio.sleep(1.0)
            await asyncio.sleep(self.cfg.tick_s)

    async def _step(self) -> None:
        now = time.monotonic()
        if now >= self._scan_at:
            self._scan_at = now + SCAN_S
            await self._scan()
        if now >= self._renew_at:
            self._renew_at = now + self.cfg.lease_s / 3
            for b in list(self._batches.values()):
                if b.running:
                    await self.store.batch_renew(b.team, b.id, list(b.running), self.lease_ms)
        await self._dispatch()

    # -- the batches' own steps -----------------------------------------------------------

    async def _scan(self) -> None:
        seen: set[tuple[str, str]] = set()
        pending = 0
        for team, bid, created_ms in await self.store.batch_active():
            record = await self.store.hgetall(layout.batch(team, bid))
            if not record:
                if time.time() * 1000 - created_ms > _ORPHAN_MS:
                    await self.store.batch_deactivate(team, bid)
                continue
            if text(record, "endpoint") not in lines.ENDPOINTS:  # not made by the API
                log.warning("batch %s of team %s: not a batch record; unlisted", bid, team)
                await self.store.batch_deactivate(team, bid)
                continue
            seen.add((team, bid))
            try:  # one batch's trouble (a bad record) must not hold up the others
                b = self._batches.get((team, bid)) or self._new(team, bid, record)
                self._batches[(team, bid)] = b
                b.status = text(record, "status") or ""
                b.model = text(record, "model") or b.model
                pending += await self._steps(b, record)
            except StoreUnavailable:
                raise
            except Exception:
                log.exception("batch %s of team %s: skipped", bid, team)
        for key in [k for k in self._batches if k not in seen]:
            if not self._batches[key].busy:
                self._cancel_lines(self._batches.pop(key))
        if self.metrics is not None:
            self.metrics.pending.set(pending)

    def _new(self, team: str, bid: str, record: dict[str, bytes]) -> _Batch:
        return _Batch(team, bid, text(record, "key_id") or "", text(record, "endpoint") or "",
                      number(record, "created_at"), number(record, "expires_at"))

    async def _steps(self, b: _Batch, record: dict[str, bytes]) -> int:
        """Start what the batch needs besides its lines; its lines still to take."""
        status, f = b.status, self.finisher
        if status in FINAL:
            self._cancel_lines(b)
            await self.store.batch_deactivate(b.team, b.id)
            return 0
        if b.busy:
            return 0
        if status == "finalizing":  # its finalizer died: the claim lapses, we take over
            self._aside(b, f.finalize(b.team, b.id, text(record, "ending") or "completed",
                                      [], b.parsed))
            return 0
        left = None
        if status in ("in_progress", "cancelling"):
            if status == "cancelling":
                self._cancel_lines(b)
            left = await self.store.batch_take(b.team, b.id, 0, self.lease_ms, "-")
            if left.running == 0 and (left.pending == 0 or status == "cancelling") \
                    and not b.running:  # nothing left to run: it ends
                ending = "cancelled" if status == "cancelling" else "completed"
                self._aside(b, f.finalize(b.team, b.id, ending, [status], b.parsed))
                return 0
        if status in ("validating", "in_progress") and time.time() >= b.expires:
            self._cancel_lines(b)
            self._aside(b, f.finalize(b.team, b.id, "expired", ["validating", "in_progress"],
                                      b.parsed))
        elif status == "validating":
            self._aside(b, self._validate(b))
        return left.pending if left is not None else 0

    def _aside(self, b: _Batch, step: Coroutine[Any, Any, Any]) -> None:
        """Run one of a batch's own steps beside the scheduler, one at a time."""
        b.busy = True

        async def run() -> None:
            try:
                await step
            except StoreUnavailable as err:
                log.warning("batch %s: store unavailable (%s); retried", b.id, err)
            except Exception:
                log.exception("batch %s: step failed; retried", b.id)
            finally:
                b.busy = False

        task = asyncio.get_running_loop().create_task(run())
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _validate(self, b: _Batch) -> None:
        parsed = await self.finisher.validate(b.team, b.id)
        if parsed is not None:
            b.parsed, b.model, b.status = parsed, parsed.model or "", "in_progress"

    async def _load(self, b: _Batch) -> None:
        record = await self.store.hgetall(layout.batch(b.team, b.id))
        b.parsed, _ = await self.finisher.load(b.team, record)

    # -- lines ----------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        if self._stopping:
            return
        self._ticks += 1
        cfg, now = self.cfg, time.monotonic()
        in_flight = self.running
        on_model: dict[str, int] = {}
        spilled = 0
        for b in self._batches.values():
            for r in b.running.values():
                spilled += r.spilled
                if not r.spilled:
                    on_model[b.model] = on_model.get(b.model, 0) + 1
        for b in sorted(self._batches.values(), key=lambda b: b.created):
            if b.status != "in_progress" or b.busy or now < b.hold_until:
                continue
            if b.parsed is None:
                self._aside(b, self._load(b))
                continue
            lines_on = on_model.get(b.model, 0)
            view = self.headroom.view(b.model, lines_on)
            if self.metrics is not None:
                self.metrics.headroom.labels(b.model).set(view.free)
            if view.preempt:
                self._preempt(b.model, view.preempt)
            pace = self._paces.get(b.model)
            if pace is None:
                pace = self._paces[b.model] = Pace(cfg.max_new_per_tick, cfg.max_in_flight)
            count = min(pace.room(self._ticks, lines_on, view), cfg.max_in_flight - in_flight)
            spill = None
            if view.free <= 0 and self._spills(b):  # the pool has no room, not just no pace
                spill = cfg.spill.models[b.model]
                count = min(cfg.spill.in_flight - spilled, cfg.max_in_flight - in_flight)
            if count <= 0:
                continue
            taken = await self.store.batch_take(b.team, b.id, count, self.lease_ms,
                                                os.urandom(4).hex())
            for member in taken.members:
                self._launch(b, member, spill)
            in_flight += len(taken.members)
            if spill is None:
                on_model[b.model] = lines_on + len(taken.members)
                pace.took(len(taken.members))
            else:
                spilled += len(taken.members)

    def _spills(self, b: _Batch) -> bool:
        """Past `spill.after` of its window, a batch whose pool has no room spills."""
        window = b.expires - b.created
        return (b.model in self.cfg.spill.models
                and time.time() >= b.created + self.cfg.spill.after * window)

    def _launch(self, b: _Batch, member: str, spill: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._line(b, member, spill))
        b.running[member] = _Running(task, time.monotonic(), spill is not None)
        if self.metrics is not None:
            self.metrics.running.inc()

    async def _line(self, b: _Batch, member: str, spill: str | None) -> None:
        assert b.parsed is not None
        index = member_index(member)
        line = b.parsed.line(index)
        end = LineEnd(b.team, b.id, member, line.custom_id)
        try:
            tries = b.attempts.get(index, 0)
            verdict = await self.runner.run(
                b.id, b.endpoint, line, await self._principal(b), model=spill, held=end,
                last_try=tries + 1 >= self.cfg.max_line_attempts)
            end.result, end.failed = verdict.result, verdict.failed
            if verdict.counted:
                b.attempts[index] = tries + 1
            if verdict.hold_s:
                b.hold_until = max(b.hold_until, time.monotonic() + verdict.hold_s)
        except asyncio.CancelledError:
            end.result = b""  # preempted, cancelled or shutting down: run again later
        except Exception:
            log.exception("batch %s line %d failed; given back", b.id, index)
            end.result = b""
        finally:
            b.running.pop(member, None)
            if self.metrics is not None:
                self.metrics.running.dec()
        # Shielded: a shutdown must not cut the step that records (or gives back) the line.
        await asyncio.shield(self._end(end))

    async def _end(self, end: LineEnd) -> None:
        deadline = time.monotonic() + self.cfg.lease_s  # past it the lease lapses anyway
        while True:
            try:
                first = await self.store.batch_line(end)
                break
            except StoreUnavailable:
                if time.monotonic() >= deadline:
                    log.warning("batch %s: line %s not recorded (store unavailable); it will"
                                " run again", end.batch_id, end.custom_id[:64])
                    return
                await asyncio.sleep(0.5)
        if first and self.metrics is not None:
            (self.metrics.failed if end.failed else self.metrics.completed).inc()

    def _preempt(self, model: str, count: int) -> None:
        """Cancel the `count` youngest lines on `model`'s pool: least work lost."""
        lines_on = sorted(((r.started, r.task) for b in self._batches.values()
                           if b.model == model for r in b.running.values() if not r.spilled),
                          key=lambda x: x[0], reverse=True)
        for _, task in lines_on[:count]:
            task.cancel()
        if self.metrics is not None and lines_on[:count]:
            self.metrics.preempted.inc(len(lines_on[:count]))

    @staticmethod
    def _cancel_lines(b: _Batch) -> None:
        for r in b.running.values():
            r.task.cancel()

    async def _principal(self, b: _Batch) -> Principal:
        """Who the batch's lines run as: its creator's key, read again now and then, so a
        revoked key or a changed policy applies to the lines still to run."""
        now = time.monotonic()
        if b.principal is not None and now - b.principal_at < self.principal_ttl_s:
            return b.principal
        if not b.key_id:
            principal = ANONYMOUS
        else:
            team = await get_team(self.store, b.team)
            raw = await self.store.hget(layout.keys(b.team), b.key_id)
            principal = (Principal.of(team, KeyRecord.from_dict(orjson.loads(raw)))
                         if team is not None and raw is not None
                         else Principal(team=b.team, key_id=b.key_id))  # refused: revoked
        b.principal, b.principal_at = principal, now
        return principal
