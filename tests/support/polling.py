"""Polling for a condition in async tests: no sleep-and-hope."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    """Return once `cond()` holds; fail the test if it still does not after `within_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not cond():
        assert loop.time() < deadline, f"condition not met within {within_s:g}s"
        await asyncio.sleep(0.01)
