"""The batch lane's store operations on Redis (`batch_base.BatchQueue`): Lua scripts for
every multi-key step, all keys of a batch under its team's hash tag (one Cluster slot)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.store import layout
from gateway.store.base import SettleArgs
from gateway.store.batch_base import LineEnd, Taken
from gateway.wire.base import RedisConnection, Script, ScriptCall

_LUA = Path(__file__).with_name("lua")


def _source(*names: str) -> bytes:
    return b"".join((_LUA / f"{name}.lua").read_bytes() for name in names)


@functools.cache
def _scripts() -> tuple[Script, ...]:
    """create, update, take, and a line's end with the settlement script after it or
    without one (read once: every store shares them)."""
    return (*(Script(f"batch_{name}", _source("common", f"batch_{name}"))
              for name in ("create", "update", "take")),
            Script("batch_line", _source("common", "batch_line", "settle")),
            Script("batch_line", _source("common", "batch_line") + b"\nreturn 1\n"))


def _flat(fields: Mapping[str, bytes]) -> list[bytes | str]:
    return [x for pair in fields.items() for x in pair]


class RedisBatchQueue:
    """Mixed into `RedisStore`, whose connection and settlement call it uses."""

    _redis: RedisConnection

    def _settle_call(self, args: SettleArgs) -> ScriptCall:
        raise NotImplementedError  # RedisStore's

    async def batch_create(self, team: str, batch_id: str, record: Mapping[str, bytes],
                           created_ms: int) -> None:
        create = _scripts()[0]
        await self._redis.evalsha(create, (layout.batch(team, batch_id), layout.batches(team)),
                                  (batch_id, created_ms, *_flat(record)))

    async def batch_ids(self, team: str, after: str | None, limit: int) -> list[str]:
        start = 0
        if after is not None:
            rank = await self._redis.execute(b"ZREVRANK", layout.batches(team), after)
            if rank is None:
                return []
            start = int(rank) + 1
        ids = await self._redis.execute(b"ZREVRANGE", layout.batches(team), start,
                                        start + limit - 1)
        return [i.decode() for i in ids]

    async def batch_update(self, team: str, batch_id: str, expect: Sequence[str],
                           fields: Mapping[str, bytes], *, claim_ms: int = 0) -> bool:
        update = _scripts()[1]
        done = await self._redis.evalsha(update, (layout.batch(team, batch_id),),
                                         (",".join(expect), claim_ms, *_flat(fields)))
        return bool(done)

    async def batch_take(self, team: str, batch_id: str, count: int, lease_ms: int,
                         token: str) -> Taken:
        take = _scripts()[2]
        keys = (layout.batch(team, batch_id), layout.batch_running(team, batch_id),
                layout.batch_requeued(team, batch_id))
        # Never resent: a take that ran twice would lease lines nobody runs (until they lapse).
        members, running, pending = await self._redis.evalsha(
            take, keys, (count, lease_ms, token), once=True)
        return Taken([m.decode() for m in members], int(running), int(pending))

    async def batch_renew(self, team: str, batch_id: str, members: Sequence[str],
                          lease_ms: int) -> None:
        if members:
            sec, usec = await self._redis.execute(b"TIME")  # the scripts' clock
            until = int(sec) * 1000 + int(usec) // 1000 + lease_ms
            await self._redis.execute(b"ZADD", layout.batch_running(team, batch_id), b"XX",
                                      *[x for m in members for x in (until, m)])

    async def batch_line(self, end: LineEnd) -> bool:
        with_settle, bare = _scripts()[3:]
        team, bid = end.team, end.batch_id
        s = end.settle
        keys: tuple[str, ...] = (layout.batch(team, bid), layout.batch_results(team, bid),
                                 layout.batch_running(team, bid),
                                 layout.batch_requeued(team, bid), layout.budget(team),
                                 layout.reservations(team))
        mine: tuple[Any, ...] = (
            b"done" if end.result else b"back", end.member, end.custom_id, end.result,
            int(end.failed), s.reservation if s else b"", s.reserved_nanos if s else 0,
            s.prompt_tokens if s else 0, s.completion_tokens if s else 0,
            s.cached_tokens if s else 0)
        if s is None or not end.result:
            return bool(await self._redis.evalsha(bare, keys, mine)) and bool(end.result)
        call = self._settle_call(s)  # settle.lua's own KEYS and ARGV first
        return bool(await self._redis.evalsha(with_settle, (*call.keys, *keys),
                                              (*call.args, *mine)))

    async def batch_drop(self, team: str, batch_id: str) -> None:
        await self._redis.execute(b"DEL", layout.batch_running(team, batch_id),
                                  layout.batch_requeued(team, batch_id),
                                  layout.batch_results(team, batch_id))

    async def batch_activate(self, team: str, batch_id: str, created_ms: int) -> None:
        await self._redis.execute(b"ZADD", layout.BATCHES_ACTIVE, created_ms,
                                  f"{team}\n{batch_id}")

    async def batch_deactivate(self, team: str, batch_id: str) -> None:
        await self._redis.execute(b"ZREM", layout.BATCHES_ACTIVE, f"{team}\n{batch_id}")

    async def batch_active(self) -> list[tuple[str, str, int]]:
        flat = await self._redis.execute(b"ZRANGE", layout.BATCHES_ACTIVE, 0, -1, b"WITHSCORES")
        out = []
        for member, score in zip(flat[::2], flat[1::2], strict=True):
            team, _, bid = member.decode().partition("\n")
            out.append((team, bid, int(float(score))))
        return out
