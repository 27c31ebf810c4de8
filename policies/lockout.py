"""Failed authentications per client address: past `limit` failures within `window_s`, an
address is locked out until its window ends.

What a lockout refuses is decided by the authenticator: keys it has not seen succeed
(so guessing from one address costs no store lookups and gets nowhere, while a valid key
behind the same address, a proxy's or a NAT's, still works). Pure bookkeeping on an
injectable clock, bounded in memory: the least recently seen addresses are forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

_MAX_ADDRESSES = 10_000


class Lockout:
    def __init__(self, limit: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit  # 0: never locked out
        self.window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()  # addr → (start, n)

    def retry_after(self, address: str | None) -> float | None:
        """Seconds until `address` may try again; None when it is not locked out."""
        if not self.limit or address is None:
            return None
        seen = self._failures.get(address)
        if seen is None:
            return None
        left = seen[0] + self.window_s - self._clock()
        if left <= 0:
            del self._failures[address]
            return None
        return left if seen[1] >= self.limit else None

    def failed(self, address: str | None) -> None:
        if not self.limit or address is None:
            return
        now = self._clock()
        start, count = self._failures.pop(address, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        self._failures[address] = (start, count + 1)
        if len(self._failures) > _MAX_ADDRESSES:
            self._failures.popitem(last=False)
