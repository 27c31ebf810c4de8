"""Simulated upstreams started in-process, so the demo config runs with no GPU and no keys.

A pool with `simulate:` gets that many simulator replicas; a provider whose key is
unset and that names `simulate_without_key` gets one. Each listens on a free port.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from gateway.config import Config
from selfhost.sim import Simulator, serve

log = logging.getLogger("turnout")


async def _start(profile: str, count: int, stack: AsyncExitStack) -> list[str]:
    urls = []
    for _ in range(count):
        running = await serve(Simulator(profile))
        stack.push_async_callback(running.close)
        urls.append(running.url)
    return urls


async def start_simulators(cfg: Config, stack: AsyncExitStack) -> dict[str, list[str]]:
    """Target name → simulator server roots, for every target that runs simulated."""
    simulated: dict[str, list[str]] = {}
    for pool in cfg.pools:
        if pool.simulate is not None:
            simulated[pool.name] = await _start(pool.simulate.profile, pool.simulate.replicas,
                                                stack)
    for prov in cfg.providers:
        if not prov.api_key and prov.simulate_without_key:
            simulated[prov.name] = await _start(prov.simulate_without_key, 1, stack)
            log.info("provider %s has no API key: using a simulated %s upstream", prov.name,
                     prov.simulate_without_key)
    return simulated
