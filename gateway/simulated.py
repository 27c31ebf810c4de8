"""Simulated upstreams started in-process, so the demo config runs with no GPU and no keys.

A pool with `simulate:` gets that many simulator replicas; a provider whose key is
unset and that names `simulate_without_key` gets one. Each listens on a free port. A
simulated pool with `kv_events` keeps a block-level KV cache per replica and publishes
its events, on free ports too.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from gateway.config import Config
from gateway.config.upstreams import Pool
from selfhost.sim import Simulator, serve

log = logging.getLogger("turnout")


@dataclass(slots=True)
class Simulators:
    roots: dict[str, list[str]] = field(default_factory=dict)  # target → server roots
    # Server root → where its KV events are published (port, replay port).
    kv_ports: dict[str, tuple[int, int]] = field(default_factory=dict)


async def _start(sims: list[Simulator], stack: AsyncExitStack, out: Simulators) -> list[str]:
    urls = []
    for sim in sims:
        running = await serve(sim)
        stack.push_async_callback(running.close)
        urls.append(running.url)
        if sim.kv_publisher is not None:
            out.kv_ports[running.url] = (sim.kv_publisher.port, sim.kv_publisher.replay_port)
    return urls


def _pool_sims(pool: Pool) -> list[Simulator]:
    sim = pool.simulate
    assert sim is not None
    kv = pool.kv_events is not None
    return [Simulator(sim.profile, kv_blocks=sim.kv_blocks if kv else None,
                      block_size=sim.block_size) for _ in range(sim.replicas)]


async def start_simulators(cfg: Config, stack: AsyncExitStack) -> Simulators:
    """Every target that runs simulated: its simulators' server roots."""
    out = Simulators()
    for pool in cfg.pools:
        if pool.simulate is not None:
            out.roots[pool.name] = await _start(_pool_sims(pool), stack, out)
    for prov in cfg.providers:
        if not prov.api_key and prov.simulate_without_key:
            out.roots[prov.name] = await _start([Simulator(prov.simulate_without_key)], stack,
                                                out)
            log.info("provider %s has no API key: using a simulated %s upstream", prov.name,
                     prov.simulate_without_key)
    return out
