"""The gateway in this process: `create_app` driven through its lifespan (asgi-lifespan)
and httpx's ASGI transport, for tests that inspect its objects (spans, metrics, logs)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from gateway.app import create_app
from gateway.config import parse_config
from gateway.services import Services
from selfhost.sim import Simulator, ThreadedSim


@dataclass
class InProcess:
    client: httpx.AsyncClient
    services: Services


@asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[InProcess]:
    """The app started (lifespan) and a client for it; stopped (flushing spans) on exit."""
    app = create_app(parse_config(config))
    async with LifespanManager(app, shutdown_timeout=15) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway") as client:
        yield InProcess(client, app.state.services)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def captured(logger: str) -> Iterator[list[str]]:
    """Every message `logger` emits meanwhile."""
    handler = _Lines()
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield handler.lines
    finally:
        log.removeHandler(handler)


def _instant_sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("instant")) as sim:
        yield sim


def sim_fixture() -> Any:
    """A test module's `sim` fixture (`sim = sim_fixture()`): an instant simulator on a
    real port, shared by the module's tests."""
    return pytest.fixture(scope="module", name="sim")(_instant_sim)
