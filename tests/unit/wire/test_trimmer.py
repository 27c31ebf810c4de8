"""wire/trimmer.py: free memory goes back once a flood of connections has gone, once per
flood, not on every close."""

from __future__ import annotations

import asyncio

import pytest

from gateway.wire import trimmer as memory


async def test_a_trim_after_a_flood_has_gone_and_only_then(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_SETTLE_S", 0.05)
    monkeypatch.setattr(memory, "_EVERY_S", 0.2)
    calls: list[int] = []
    trimmer = memory.Trimmer(lambda pad: calls.append(pad) or 1)
    loop = asyncio.get_running_loop()
    for n in range(1, 401):  # a peak too small to bother
        trimmer.seen(n, loop)
    trimmer.seen(10, loop)
    for n in range(11, 2001):  # a flood
        trimmer.seen(n, loop)
    for n in range(2000, 99, -1):  # it goes: one trim, once the rest has gone too
        trimmer.seen(n, loop)
    assert calls == []
    while not calls:  # noqa: ASYNC110 (the trim is a loop callback: nothing to await)
        await asyncio.sleep(0.01)
    assert calls == [0] and trimmer.trims == 1
    for n in range(100, 2001):  # another flood at once: not before _EVERY_S has passed
        trimmer.seen(n, loop)
    trimmer.seen(0, loop)
    started = loop.time()
    while len(calls) < 2:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert loop.time() - started >= 0.1
