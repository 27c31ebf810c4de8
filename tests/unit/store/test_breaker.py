"""The store's breaker over a connection that stalls (answers only by timing out): after
the first timeout the calls that follow fail at once, one probe a second goes through,
and the first answer closes it."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store import StoreUnavailable
from gateway.store.breaker import StoreBreaker
from tests.support.fake_wire import FakeRedis


class Stalled(FakeRedis):
    """Every call waits `stall_s`, then fails as a timed-out Redis call does."""

    def __init__(self, stall_s: float) -> None:
        super().__init__(lambda command: b"PONG")
        self.stall_s = stall_s
        self.stalled = True
        self.reached = 0

    async def execute(self, *args: object) -> object:
        self.reached += 1
        if self.stalled:
            await asyncio.sleep(self.stall_s)
            raise StoreUnavailable("redis unavailable (no reply in 1s)")
        return await super().execute(*args)  # type: ignore[arg-type]


async def test_after_a_timeout_calls_fail_at_once_until_a_probe_is_answered() -> None:
    now = [0.0]
    inner = Stalled(stall_s=0.05)
    breaker = StoreBreaker(inner, retry_s=1.0, clock=lambda: now[0])
    with pytest.raises(StoreUnavailable):
        await breaker.execute(b"PING")  # the first call waits out its timeout
    assert breaker.down and inner.reached == 1
    results = await asyncio.gather(*(breaker.execute(b"PING") for _ in range(50)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert inner.reached == 1 and breaker.fast_failures == 50  # none of them waited
    now[0] = 1.5  # time for a probe: one call tries, the others still fail at once
    probe = asyncio.ensure_future(breaker.execute(b"PING"))
    await asyncio.sleep(0)
    with pytest.raises(StoreUnavailable):
        await breaker.execute(b"PING")
    with pytest.raises(StoreUnavailable):
        await probe
    assert inner.reached == 2
    inner.stalled = False
    now[0] = 3.0
    assert await breaker.execute(b"PING") == b"PONG"  # answered: closed
    assert not breaker.down
    assert await breaker.execute(b"PING") == b"PONG" and inner.reached == 4
