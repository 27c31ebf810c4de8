"""Load from client threads for tests against a running gateway: each thread runs its
client loop until the load is stopped, recording what it saw."""

from __future__ import annotations

import threading
from typing import Generic, Self, TypeVar

from tests.support.accounts import eventually

T = TypeVar("T")


class Clients(Generic[T]):
    """`count` threads, each running `client(index)` (a loop that checks `done`) from
    `with` until its end; `record` keeps what they saw, in order."""

    def __init__(self, count: int) -> None:
        self.results: list[T] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self._threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                         for i in range(count)]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self._threads:
            t.join(30)

    def client(self, index: int) -> None:
        raise NotImplementedError

    def record(self, result: T) -> None:
        with self.lock:
            self.results.append(result)

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Until `count` results are in."""
        eventually(lambda: len(self.results) >= count, timeout)
