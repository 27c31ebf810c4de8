"""Fixtures for the simulator's tests: a running simulator, and clients closed after each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from selfhost.sim import Simulator, ThreadedSim
from tests.support.sim_clients import OPEN


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("instant")) as running:
        yield running


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()
