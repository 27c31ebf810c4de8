"""What a running gateway process holds: built at startup (the app's lifespan), read by
the HTTP surfaces, torn down at shutdown."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from gateway.config import Config
from gateway.dispatch import Dispatcher
from gateway.pipeline import Pipeline
from gateway.registry import build_registry
from gateway.simulated import start_simulators
from gateway.store import Store, open_store
from gateway.upstream import UpstreamClient
from policies.routing import LeastInFlight
from policies.scoreboard import Scoreboard

log = logging.getLogger("turnout")


class Services:
    pipeline: Pipeline
    store: Store
    client: UpstreamClient

    def __init__(self, config: Config) -> None:
        self.config = config
        self.max_body = config.server.max_body_bytes
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        cfg = self.config
        simulated = await start_simulators(cfg, self._stack)
        registry = build_registry(cfg, simulated)
        self.client = UpstreamClient(connect_timeout=cfg.server.timeouts.connect_s)
        await self.client.start()
        self._stack.push_async_callback(self.client.close)
        self.store = open_store(cfg.redis.url if cfg.redis else None)
        self._stack.push_async_callback(self.store.close)
        board = Scoreboard()
        self.pipeline = Pipeline(
            registry, LeastInFlight(board), Dispatcher(self.client, board, cfg.server.timeouts)
        )
        log.info("models: %s", ", ".join(
            f"{name} → {', '.join(d.id for d in deps)}" for name, deps in registry.models.items()))

    async def stop(self) -> None:
        await self._stack.aclose()
