"""A one-line progress display: `[ 7/27]  1:23  closed c=16 · turnout-full  (5s)`.

On a terminal the line ticks every half second while a step runs and is replaced by
the step's outcome; elsewhere (CI logs, pytest) each step prints one plain line.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType


class Progress:
    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.done = 0
        self.quiet = quiet
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty() and not quiet
        self._label = ""
        self._outcome = ""
        self._step_start = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _prefix(self) -> str:
        el = int(time.monotonic() - self.started)
        return f"[{self.done + 1:>2}/{self.total}] {el // 60:>2}:{el % 60:02d}  "

    def note(self, message: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def step(self, label: str) -> Progress:
        self._label = label
        return self

    def __enter__(self) -> Progress:
        self._step_start = time.monotonic()
        if self.tty:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            secs = time.monotonic() - self._step_start
            sys.stderr.write(f"\r\033[K{self._prefix()}{self._label}  ({secs:.0f}s)")
            sys.stderr.flush()

    def finish(self, outcome: str) -> None:
        """Report the step's outcome (called inside the `with` block)."""
        self._outcome = outcome

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        outcome = self._outcome
        if exc is not None:
            outcome = f"FAILED: {exc}"
        self.note(f"{self._prefix()}{self._label:<34} {outcome}")
        self._outcome = ""
        self.done += 1
