"""vLLM's KV-cache events: their wire format, and a subscriber per replica that keeps the
index of what each replica has cached (`policies/kv_index.py`).

A replica started with
`--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}'` (and prefix caching,
vLLM's default) publishes (vLLM 0.10 to 0.32, `vllm/distributed/kv_events.py`):

- on its PUB socket, one message per engine step that changed the cache: three frames,
  the topic (`""` by default), the batch's sequence number (8 bytes, big-endian, from 0
  at the replica's start) and the batch, msgpack: `[ts, [event, ...], dp_rank]`;
- events are `BlockStored` (`block_hashes`, `parent_block_hash`, `token_ids`,
  `block_size`, `lora_id`, `medium`, `lora_name`, …), `BlockRemoved` (`block_hashes`,
  `medium`) and `AllBlocksCleared`: msgpack maps tagged by `"type"` (vLLM >= 0.11), or
  arrays with the tag first (older releases); both are read;
- on its ROUTER replay socket, for a request holding a start sequence number (8 bytes),
  every batch it still buffers from that number on (`buffer_steps`, 10,000 by default),
  then an end marker (sequence number -1).

The subscriber connects to both on every replica (`tcp://<replica host>:<port>`), replays
from 0 to catch up, then follows the PUB stream, replaying any gap. Every
`heartbeat_s` it asks for a replay from the last batch it applied: the answer must start
with that very batch. No answer in time and the replica is *unknown* (its events stopped:
routing does not judge it by its cache); a different or missing batch means it restarted
or that events were lost beyond the buffer, so its entry is rebuilt from a full replay.
Only the primary tier's blocks are indexed (`medium` GPU, or none given: the CPU
backend's cache reports GPU too), of KV group 0 (a hybrid model's other groups key the
same blocks differently).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec
import zmq
import zmq.asyncio

from policies.kv_index import KvIndex

log = logging.getLogger("turnout.kv_events")

END_SEQ = -1
_PRIMARY_MEDIA = (None, "GPU")
_decoder = msgspec.msgpack.Decoder()


# --------------------------------------------------------------------------- wire format


@dataclass(frozen=True, slots=True)
class Stored:
    keys: list[int | bytes]
    block_size: int | None
    token_ids: list[int]
    lora_name: str | None = None


@dataclass(frozen=True, slots=True)
class Removed:
    keys: list[int | bytes]


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared
# Field order of the array form (vLLM before 0.11: array_like events).
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                  "medium", "lora_name")
_REMOVED_FIELDS = ("block_hashes", "medium")


def decode_batch(payload: bytes) -> tuple[float, list[Event]]:
    """One published batch: (timestamp, the events we index). Raises ValueError when it is
    not a batch; events of other kinds, tiers or KV groups are left out."""
    try:
        raw = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not msgpack: {exc}") from None
    if not (isinstance(raw, list) and len(raw) >= 2 and isinstance(raw[1], list)):
        raise ValueError("not an event batch")
    events = [e for item in raw[1] if (e := _event(item)) is not None]
    return float(raw[0]), events


def _fields(item: Any) -> tuple[str, dict[str, Any]] | None:
    if isinstance(item, dict):
        kind = item.get("type")
        return (kind, item) if isinstance(kind, str) else None
    if isinstance(item, list) and item and isinstance(item[0], str):
        names = {"BlockStored": _STORED_FIELDS, "BlockRemoved": _REMOVED_FIELDS}.get(item[0], ())
        return item[0], dict(zip(names, item[1:], strict=False))
    return None


def _event(item: Any) -> Event | None:
    got = _fields(item)
    if got is None:
        return None
    kind, f = got
    if kind == "AllBlocksCleared":
        return Cleared()
    if f.get("medium") not in _PRIMARY_MEDIA or f.get("group_idx") not in (None, 0):
        return None
    keys = f.get("block_hashes")
    if not isinstance(keys, list):
        return None
    if kind == "BlockStored":
        size = f.get("block_size")
        tokens = f.get("token_ids")
        lora = f.get("lora_name")
        return Stored(keys, size if isinstance(size, int) else None,
                      tokens if isinstance(tokens, list) else [],
                      lora if isinstance(lora, str) else None)
    if kind == "BlockRemoved":
        return Removed(keys)
    return None


def apply(index: KvIndex, replica_id: str, events: Sequence[Event]) -> None:
    for ev in events:
        if isinstance(ev, Stored):
            # A batch may carry several blocks: their size is the event's block_size each.
            index.stored(replica_id, ev.keys, ev.block_size)
        elif isinstance(ev, Removed):
            index.removed(replica_id, ev.keys)
        else:
            index.cleared(replica_id)


# --------------------------------------------------------------------------- subscriber


@dataclass(frozen=True, slots=True)
class KvEventsSpec:
    port: int = 5557  # each replica's PUB endpoint port
    replay_port: int = 5558  # its replay (ROUTER) endpoint port
    topic: str = ""
    heartbeat_s: float = 2.0  # a replay request this often checks the stream is alive
    timeout_s: float = 1.0  # a replay unanswered this long: the replica is unknown


class _Lost(Exception):
    """The replay does not continue what was applied: rebuild from a full replay."""


class ReplicaEvents:
    """Follows one replica's events into the index until cancelled."""

    def __init__(self, replica_id: str, host: str, ports: tuple[int, int], spec: KvEventsSpec,
                 index: KvIndex, ctx: zmq.asyncio.Context) -> None:
        self.replica_id = replica_id
        self._spec = spec
        self._index = index
        self._ctx = ctx
        host = f"[{host}]" if ":" in host else host
        self._pub = f"tcp://{host}:{ports[0]}"
        self._replay = f"tcp://{host}:{ports[1]}"
        self._last: tuple[int, bytes] | None = None  # (seq, payload digest) last applied
        self.tried = asyncio.Event()  # set once the first catch-up is done (or failed)

    async def run(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.IPV6, 1)
        sub.setsockopt(zmq.SUBSCRIBE, self._spec.topic.encode())
        sub.connect(self._pub)
        try:
            while True:
                await self._catch_up()
                self.tried.set()
                await self._follow(sub)
        finally:
            sub.close(linger=0)
            self._index.set_known(self.replica_id, False)

    async def _follow(self, sub: zmq.asyncio.Socket) -> None:
        """Apply live batches; return when a heartbeat finds the replica unknown."""
        loop = asyncio.get_running_loop()
        beat = loop.time() + self._spec.heartbeat_s
        while True:
            wait = beat - loop.time()
            if wait > 0 and await sub.poll(wait * 1000):
                frames = await sub.recv_multipart()
                if len(frames) == 3:
                    await self._live(int.from_bytes(frames[1], "big", signed=True), frames[2])
                continue
            beat = loop.time() + self._spec.heartbeat_s
            if not await self._catch_up():
                return

    async def _live(self, seq: int, payload: bytes) -> None:
        last = self._last[0] if self._last is not None else -1
        if seq <= last:
            # Applied already (the replay raced the stream), or the replica restarted and
            # numbers from 0 again: the next heartbeat finds out, and then rebuilds.
            return
        if seq > last + 1:
            await self._catch_up()  # a gap: the replay has the batches in between
            if self._last is not None and seq <= self._last[0]:
                return
        self._apply(seq, payload)

    async def _catch_up(self) -> bool:
        """Replay from the last applied batch (or the start); False when unanswered."""
        try:
            try:
                await self._replay_from(self._last)
            except _Lost:
                log.info("kv events of %s: lost track (restart or overflow); rebuilding",
                         self.replica_id)
                self._reset()
                await self._replay_from(None)
        except TimeoutError:
            if self._known():
                log.warning("kv events of %s stopped: replica unknown", self.replica_id)
            self._index.set_known(self.replica_id, False)
            return False
        if not self._known():
            log.info("kv events of %s followed", self.replica_id)
        self._index.set_known(self.replica_id, True)
        return True

    def _known(self) -> bool:
        entry = self._index.get(self.replica_id)
        return entry is not None and entry.known

    async def _replay_from(self, last: tuple[int, bytes] | None) -> None:
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IPV6, 1)
        dealer.connect(self._replay)
        start = last[0] if last is not None else 0
        try:
            await dealer.send_multipart((b"", start.to_bytes(8, "big")))
            first = True
            while True:
                if not await dealer.poll(self._spec.timeout_s * 1000):
                    raise TimeoutError
                frames = await dealer.recv_multipart()
                if len(frames) != 4:
                    continue
                seq = int.from_bytes(frames[2], "big", signed=True)
                if seq == END_SEQ:
                    if first and last is not None:
                        raise _Lost  # the batch we applied last is gone
                    return
                if first and last is not None and (
                        seq != last[0] or hashlib.blake2b(frames[3]).digest() != last[1]):
                    raise _Lost
                if first and last is None and seq > 0 and self._last is None:
                    log.info("kv events of %s: replay starts at batch %d (history beyond"
                             " the replica's buffer is not known)", self.replica_id, seq)
                first = False
                if self._last is None or seq > self._last[0]:
                    self._apply(seq, frames[3])
        finally:
            dealer.close(linger=0)

    def _apply(self, seq: int, payload: bytes) -> None:
        try:
            _, events = decode_batch(payload)
        except ValueError as exc:
            log.warning("kv events of %s: batch %d unreadable (%s)", self.replica_id, seq, exc)
            events = []
        apply(self._index, self.replica_id, events)
        self._last = (seq, hashlib.blake2b(payload).digest())

    def _reset(self) -> None:
        self._last = None
        self._index.cleared(self.replica_id)


class KvEventsMonitor:
    """One pool's subscribers: one per current member, started and stopped as the
    membership (`members()`, static or DNS) changes. A replica's events are at its host on
    the spec's ports, or on its own (`ports`, by server root) where replicas share a
    host."""

    def __init__(self, pool: str, spec: KvEventsSpec, index: KvIndex, *,
                 members: Callable[[], list[str]], replica_id: Callable[[str], str],
                 ports: dict[str, tuple[int, int]] | None = None, every_s: float = 1.0
                 ) -> None:
        self.pool = pool
        self._spec = spec
        self._ports = ports or {}
        self._index = index
        self._members = members
        self._replica_id = replica_id
        self._every_s = every_s
        self._ctx = zmq.asyncio.Context()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe to every member, and wait (a moment at most) for each to catch up
        from its replay: routing starts out knowing what the replicas hold."""
        waits = [asyncio.create_task(f.tried.wait()) for f in self.sync()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._spec.timeout_s * 2)
            for task in pending:
                task.cancel()
        self._watch = asyncio.create_task(self._watch_members())

    def sync(self) -> list[ReplicaEvents]:
        """Follow the current members (and no others); the new followers."""
        roots = set(self._members())
        for root in [r for r in self._tasks if r not in roots]:
            self._tasks.pop(root).cancel()
            self._index.forget(self._replica_id(root))
        new = []
        for root in roots - self._tasks.keys():
            host = urlsplit(root).hostname or "127.0.0.1"
            ports = self._ports.get(root, (self._spec.port, self._spec.replay_port))
            follower = ReplicaEvents(self._replica_id(root), host, ports, self._spec,
                                     self._index, self._ctx)
            self._tasks[root] = asyncio.create_task(self._run(follower))
            new.append(follower)
        return new

    async def _watch_members(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            self.sync()

    @staticmethod
    async def _run(follower: ReplicaEvents) -> None:
        while True:  # a subscriber must outlive any one bad round
            try:
                await follower.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kv events of %s: subscriber failed", follower.replica_id)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *([self._watch] if self._watch else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._ctx.destroy(linger=0)
