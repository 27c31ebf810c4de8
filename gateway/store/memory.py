"""In-memory store: the embedded default for one process with no Redis configured.

Single-threaded asyncio code with no awaits inside each operation, so every
operation is atomic with respect to the others.
"""

from __future__ import annotations

import time


class MemoryStore:
    name = "memory"

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes | int, float | None]] = {}

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

    async def set_if_absent(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        if self._live(key) is not None:
            return False
        self._data[key] = (value, self._expiry(ttl_s))
        return True

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        current = self._live(key)
        if current is None:
            self._data[key] = (amount, self._expiry(ttl_s))
            return amount
        total = int(current) + amount
        self._data[key] = (total, self._data[key][1])
        return total

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
