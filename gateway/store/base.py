"""The `Store` interface. Anything that must hold across workers and replicas goes here.

Both implementations give the same semantics; every multi-key update is atomic
(a Lua script in Redis, a plain critical section in memory), so callers never
compose read-modify-write sequences themselves.
"""

from __future__ import annotations

from typing import Protocol


class StoreUnavailable(Exception):
    """The backing store cannot be reached; callers apply their outage policy."""


class Store(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None: ...

    async def set_if_absent(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Set only when the key does not exist; True when this call set it."""
        ...

    async def delete(self, key: str) -> None: ...

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        """Add to an integer counter (created at 0); the TTL is set when the key is created."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
