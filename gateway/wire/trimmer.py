"""Memory back to the system after a flood of connections. After thousands of
connections close (an attack of half-open ones, a burst) a process would stay as large
as at its peak: CPython's free lists (2,000 tuples of each small size, ...) keep the last
objects freed, scattered over the allocator's arenas, so no arena empties and none goes
back; glibc keeps freed memory in its heaps for reuse. So once the connections fall to a
quarter of a high peak, `Trimmer` runs, `_SETTLE_S` later (the rest of the flood has
closed by then) and at most once every `_EVERY_S`, a full garbage collection (which
empties the free lists, and the emptied arenas go back) and `malloc_trim(0)` (glibc's
free pages go back; skipped where the C library has none: musl, macOS)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("turnout")

_PEAK_WORTH_IT = 512  # connections: below this a peak frees too little to bother
_SETTLE_S = 2.0
_EVERY_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


class Trimmer:
    """Watches one process's connection count."""

    def __init__(self, trim: Callable[[int], int] | None = None) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self.peak = 0
        self._last = -_EVERY_S
        self._pending = False
        self.trims = 0

    def seen(self, connections: int, loop: asyncio.AbstractEventLoop) -> None:
        if connections > self.peak:
            self.peak = connections
        elif (self.peak >= _PEAK_WORTH_IT and connections <= self.peak // 4
              and not self._pending):
            self._pending = True
            wait = max(_SETTLE_S, self._last + _EVERY_S - time.monotonic())
            loop.call_later(wait, self._run, connections)

    def _run(self, connections: int) -> None:
        log.info("connections down from a peak of %d to %d: returning free memory",
                 self.peak, connections)
        self._pending, self._last, self.peak = False, time.monotonic(), connections
        self.trims += 1
        gc.collect()
        if self._trim is not None:
            self._trim(0)
