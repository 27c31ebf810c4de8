"""In-memory store: the embedded default for one process with no Redis configured.

Single-threaded asyncio code with no awaits inside each operation, so every
operation is atomic with respect to the others.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Sequence

from gateway.store import layout, memory_ledger
from gateway.store.base import AdmitArgs, AdmitResult, CacheWrite, Release, SettleArgs
from gateway.store.memory_batch import MemoryBatchQueue
from gateway.store.memory_ledger import LedgerState


class MemoryStore(MemoryBatchQueue):
    name = "memory"

    def __init__(self, *, stream_maxlen: int = 100_000) -> None:
        self._data: dict[str, tuple[bytes | int, float | None]] = {}
        self._sets: dict[str, set[str]] = {}
        self._ledger = LedgerState(stream_maxlen)

    def _live(self, key: str) -> bytes | int | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return value

    @staticmethod
    def _expiry(ttl_s: float | None) -> float | None:
        return None if ttl_s is None else time.monotonic() + ttl_s

    async def get(self, key: str) -> bytes | None:
        value = self._live(key)
        if isinstance(value, int):
            return str(value).encode()
        return value

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        self._data[key] = (value, self._expiry(ttl_s))

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        return {k: _bytes(v) for k, v in self._ledger.hashes.get(key, {}).items()}

    async def hget(self, key: str, field: str) -> bytes | None:
        value = self._ledger.hashes.get(key, {}).get(field)
        return None if value is None else _bytes(value)

    async def hset(self, key: str, field: str, value: bytes) -> None:
        self._ledger.hash(key)[field] = value

    async def hdel(self, key: str, field: str) -> bool:
        return self._ledger.hash(key).pop(field, None) is not None

    async def sadd(self, key: str, member: str) -> None:
        self._sets.setdefault(key, set()).add(member)

    async def smembers(self, key: str) -> builtins.set[str]:
        return set(self._sets.get(key, ()))

    async def xrange(self, key: str, after: str | None, count: int) -> list[tuple[str, bytes]]:
        entries = self._ledger.streams.get(key, ())
        start = _stream_id(after) if after else (-1, -1)
        return [e for e in entries if _stream_id(e[0]) > start][:count]

    async def admit(self, args: AdmitArgs) -> AdmitResult:
        return memory_ledger.admit(self._ledger, args)

    async def settle(self, args: SettleArgs) -> None:
        memory_ledger.settle(self._ledger, args)

    async def settle_many(self, batch: Sequence[SettleArgs | Release]) -> None:
        for args in batch:
            if isinstance(args, SettleArgs):
                memory_ledger.settle(self._ledger, args)
            else:
                memory_ledger.release(self._ledger, args)

    async def cache_lookup(self, key: str, lock: str, token: bytes,
                           lock_ttl_s: float) -> tuple[bytes | None, bool]:
        entry = self._live(key)
        if isinstance(entry, bytes):
            return entry, False
        if lock_ttl_s <= 0 or self._live(lock) is not None:
            return None, False
        self._data[lock] = (token, self._expiry(lock_ttl_s))
        return None, True

    async def cache_finish(self, writes: Sequence[CacheWrite]) -> None:
        for w in writes:
            if w.value is not None:
                self._data[w.key] = (w.value, self._expiry(w.ttl_s))
            if w.token and self._live(w.lock) == w.token:
                del self._data[w.lock]

    async def cache_renew(self, locks: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        for lock, token in locks:
            if self._live(lock) == token:
                self._data[lock] = (token, self._expiry(ttl_s))

    async def limiter_tats(self, team: str) -> tuple[float, dict[str, float]]:
        name = layout.limiters(team)
        return time.time() * 1000, {field: tat for (key, field), tat in self._ledger.tats.items()
                                    if key == name}

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


def _bytes(value: bytes | int) -> bytes:
    return b"%d" % value if isinstance(value, int) else value


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
