"""A circuit breaker on the store itself: once Redis has failed to answer, the calls that
follow fail at once instead of each waiting out its own timeout, so every caller takes
its outage path without delay (admission: fail-open or fail-closed; authentication: the
cached or declared key; the cache: bypass; settlement: buffered and sent again). Every
`retry_s` one call goes through as the probe; when it is answered the breaker closes.

Without it a stalled Redis (SIGSTOP, a failover in progress) cost each request its key
lookup's timeout plus its admission's: about 2 s, for as long as the stall lasted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gateway.store.base import StoreUnavailable
from gateway.wire.base import Arg, Command, Keys, RedisConnection, Script, Subscription

T = TypeVar("T")


class StoreBreaker:
    """A `RedisConnection` that fails fast while the one it wraps is known to be down."""

    def __init__(self, inner: RedisConnection, *, retry_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._inner = inner
        self._retry_s = retry_s  # between probes while down
        self._clock = clock
        self._down = False
        self._probe_at = 0.0  # while down: when the next call may try
        self._probing = False
        self._why = ""
        self.fast_failures = 0  # calls refused at once while down

    @property
    def down(self) -> bool:
        return self._down

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        probe = False
        if self._down:
            if self._probing or self._clock() < self._probe_at:
                self.fast_failures += 1
                raise StoreUnavailable(self._why)
            probe = self._probing = True
        try:
            result = await call()
        except StoreUnavailable as err:
            self._down, self._why = True, str(err)
            self._probe_at = self._clock() + self._retry_s
            raise
        finally:
            if probe:
                self._probing = False
        self._down = False
        return result

    async def execute(self, *args: Arg) -> Any:
        return await self._call(lambda: self._inner.execute(*args))

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        return await self._call(lambda: self._inner.evalsha(script, keys, args, once=once))

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        return await self._call(lambda: self._inner.execute_many(commands))

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Subscription:
        return self._inner.subscription(channel, on_message, on_down, on_up)

    async def close(self) -> None:
        await self._inner.close()
