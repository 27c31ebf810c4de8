"""One attempt at a time, shared: concurrent callers of a connect, a cluster's slot-map
load or a detection wait for the one already under way instead of starting their own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Shared(Generic[T]):
    def __init__(self, make: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._make = make
        self._task: asyncio.Task[T] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> asyncio.Task[T]:
        """The attempt under way, or a new one."""
        task = self._task
        if task is None:
            task = self._task = asyncio.get_running_loop().create_task(self._make())
            task.add_done_callback(self._done)
        return task

    async def join(self) -> T:
        # shield: a caller cancelled while waiting must not cancel the others' attempt
        return await asyncio.shield(self.start())

    async def settle(self, *, cancel: bool = False) -> None:
        """Wait for the attempt under way to end (`cancel`: end it), if there is one."""
        task = self._task
        if task is not None:
            if cancel:
                task.cancel()
            await asyncio.wait([task])

    def _done(self, task: asyncio.Task[T]) -> None:
        self._task = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone
