"""The batch lane's store operations in memory (`batch_base.BatchQueue`): the Lua scripts
of `redis_batch.py` step for step on the in-memory ledger's dicts. No awaits inside an
operation, so each is atomic like a script."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from gateway.store import layout, memory_ledger
from gateway.store.base import ALL
from gateway.store.batch_base import OPEN, LineEnd, Taken, member_index
from gateway.store.memory_ledger import LedgerState


def _now_ms() -> float:
    return time.time() * 1000


class MemoryBatchQueue:
    """Mixed into `MemoryStore`: records and results are ledger hashes (so `hgetall` reads
    them), leases, lists and indexes its sorted sets (a list: a dict in insertion order)."""

    _ledger: LedgerState

    def _zset(self, key: str) -> dict[str, float]:
        return self._ledger.zsets.setdefault(key, {})

    async def batch_create(self, team: str, batch_id: str, record: Mapping[str, bytes],
                           created_ms: int) -> None:
        key = layout.batch(team, batch_id)
        if key not in self._ledger.hashes:
            self._ledger.hash(key).update(record)
            self._zset(layout.batches(team))[batch_id] = created_ms

    async def batch_ids(self, team: str, after: str | None, limit: int) -> list[str]:
        index = self._zset(layout.batches(team))
        ids = [i for i, _ in sorted(index.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
        if after is not None:
            if after not in index:
                return []
            ids = ids[ids.index(after) + 1:]
        return ids[:limit]

    async def batch_update(self, team: str, batch_id: str, expect: Sequence[str],
                           fields: Mapping[str, bytes], *, claim_ms: int = 0) -> bool:
        record = self._ledger.hashes.get(layout.batch(team, batch_id))
        if record is None or _text(record.get("status")) not in expect:
            return False
        now = _now_ms()
        if claim_ms > 0:
            if float(_text(record.get("claim")) or 0) > now:
                return False
            record["claim"] = b"%d" % (now + claim_ms)
        record.update(fields)
        return True

    async def batch_take(self, team: str, batch_id: str, count: int, lease_ms: int,
                         token: str) -> Taken:
        record = self._ledger.hash(layout.batch(team, batch_id))
        running = self._zset(layout.batch_running(team, batch_id))
        requeued = self._zset(layout.batch_requeued(team, batch_id))
        total, nxt = int(record.get("total", 0)), int(record.get("next", 0))
        taken: list[int] = []
        now = _now_ms()
        if _text(record.get("status")) == "in_progress" and count > 0:
            lapsed = sorted((score, m) for m, score in running.items() if score <= now)
            for _, member in lapsed[:count]:
                del running[member]
                taken.append(member_index(member))
            while len(taken) < count and requeued:
                first = next(iter(requeued))
                del requeued[first]
                taken.append(int(first))
            fresh = min(count - len(taken), total - nxt)
            taken += range(nxt, nxt + max(fresh, 0))
            if fresh > 0:
                nxt += fresh
                record["next"] = nxt
        members = [f"{i}:{token}" for i in taken]
        for member in members:
            running[member] = now + lease_ms
        held = sum(1 for score in running.values() if score > now)
        return Taken(members, held, total - nxt + len(requeued))

    async def batch_renew(self, team: str, batch_id: str, members: Sequence[str],
                          lease_ms: int) -> None:
        running = self._zset(layout.batch_running(team, batch_id))
        until = _now_ms() + lease_ms
        for member in members:
            if member in running:
                running[member] = until

    async def batch_line(self, end: LineEnd) -> bool:
        st, team, bid = self._ledger, end.team, end.batch_id
        self._zset(layout.batch_running(team, bid)).pop(end.member, None)
        record = st.hash(layout.batch(team, bid))
        results = st.hash(layout.batch_results(team, bid))
        status = _text(record.get("status"))
        s = end.settle
        if not end.result or status not in OPEN or end.custom_id in results:
            if s is not None:  # its part of the reservation back (lua: give_back)
                part = None if s.reserved_nanos == ALL else s.reserved_nanos
                memory_ledger._release(st, team, s.reservation, part)
            if (not end.result and status == "in_progress"
                    and end.custom_id not in results):
                self._zset(layout.batch_requeued(team, bid))[str(member_index(end.member))] = 0
            return False
        results[end.custom_id] = b"%d %d %s" % (member_index(end.member), end.failed,
                                                end.result)
        _incr(record, "failed" if end.failed else "completed", 1)
        if s is not None:
            for name in ("prompt_tokens", "completion_tokens", "cached_tokens"):
                _incr(record, name, getattr(s, name))
            memory_ledger.settle(st, s)
        return True

    async def batch_drop(self, team: str, batch_id: str) -> None:
        self._ledger.zsets.pop(layout.batch_running(team, batch_id), None)
        self._ledger.zsets.pop(layout.batch_requeued(team, batch_id), None)
        self._ledger.hashes.pop(layout.batch_results(team, batch_id), None)

    async def batch_activate(self, team: str, batch_id: str, created_ms: int) -> None:
        self._zset(layout.BATCHES_ACTIVE)[f"{team}\n{batch_id}"] = created_ms

    async def batch_deactivate(self, team: str, batch_id: str) -> None:
        self._zset(layout.BATCHES_ACTIVE).pop(f"{team}\n{batch_id}", None)

    async def batch_active(self) -> list[tuple[str, str, int]]:
        out = []
        for member, score in sorted(self._zset(layout.BATCHES_ACTIVE).items(),
                                    key=lambda kv: kv[1]):
            team, _, bid = member.partition("\n")
            out.append((team, bid, int(score)))
        return out


def _text(value: bytes | int | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else value.decode()


def _incr(h: memory_ledger.Hash, name: str, amount: int) -> None:
    if amount:
        h[name] = int(h.get(name, 0)) + amount
