"""The server telling the app it is about to stop.

uvicorn handles SIGINT and SIGTERM in each process's main thread, with handlers it
installed before the app starts; on one it stops accepting connections, waits up to its
graceful timeout for open responses, cancels what is left, then runs the app's shutdown.
A streaming response never finishes by itself, and a draining gateway must answer
`/readyz` with 503 from the first moment, so the app needs to know when the wait begins:
`on_server_exit` puts a callback in front of the server's own handler (which still runs
after it). Under anything else (no handler of the server's to pass the signal to, or not
the main thread) nothing is changed.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType


def on_server_exit(callback: Callable[[], None]) -> None:
    """Call `callback` in the running loop when the server is told to stop."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous) or previous is signal.default_int_handler:
            continue

        def handler(signum: int, frame: FrameType | None,
                    previous: Callable[[int, FrameType | None], object] = previous) -> None:
            loop.call_soon_threadsafe(callback)
            previous(signum, frame)

        signal.signal(sig, handler)
