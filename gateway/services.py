"""What a running gateway process holds: built at startup (the app's lifespan), read by
the HTTP surfaces, torn down at shutdown."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from gateway.accounts import Accounts
from gateway.admission import Admission
from gateway.config import Config
from gateway.dispatch import Dispatcher
from gateway.metering import Meter
from gateway.pipeline import Pipeline
from gateway.registry import Registry, replica_id
from gateway.routing import Router
from gateway.simulated import start_simulators
from gateway.store import Store, open_store
from gateway.upstream import UpstreamClient
from policies.scoreboard import Scoreboard
from selfhost.pool import PoolMonitor, PoolSpec

log = logging.getLogger("turnout")


class Services:
    pipeline: Pipeline
    store: Store
    client: UpstreamClient
    accounts: Accounts
    meter: Meter

    def __init__(self, config: Config) -> None:
        self.config = config
        self.max_body = config.server.max_body_bytes
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        cfg = self.config
        simulated = await start_simulators(cfg, self._stack)
        registry = Registry(cfg, simulated)
        self.client = UpstreamClient(connect_timeout=cfg.server.timeouts.connect_s)
        await self.client.start()
        self._stack.push_async_callback(self.client.close)
        self.store = open_store(cfg.redis.url if cfg.redis else None,
                                stream_maxlen=cfg.metering.stream_maxlen)
        self._stack.push_async_callback(self.store.close)
        self.accounts = Accounts(self.store, required=cfg.auth_required,
                                 admin_key=cfg.auth.admin_key, cache_ttl_s=cfg.auth.cache_ttl_s)
        await self.accounts.start(cfg.teams)
        self._stack.push_async_callback(self.accounts.stop)
        self.meter = Meter(self.store)
        self._stack.push_async_callback(self.meter.close)  # runs before the store closes
        board = Scoreboard()
        await self._monitor_pools(registry, board)
        self.pipeline = Pipeline(
            registry, Router(cfg, board),
            Dispatcher(self.client, board, cfg.server.timeouts),
            self.accounts, Admission(self.store, cfg.admission, cfg.server.timeouts.total_s),
            self.meter,
        )
        log.info("models: %s", ", ".join(
            f"{name} → {', '.join(d.id for d in deps)}" for name, deps in registry.models.items()))

    async def _monitor_pools(self, registry: Registry, board: Scoreboard) -> None:
        """Probe and scrape every pool replica; resolve DNS pools before serving."""
        for pool in self.config.pools:
            simulated = registry.simulated.get(pool.name)
            spec = PoolSpec(pool.name, tuple(simulated or pool.endpoints), pool.resolver,
                            pool.dns_interval_s, pool.probe_interval_s, pool.scrape_interval_s)
            monitor = self._monitor(spec, registry, board)
            if any(e.startswith("dns://") for e in spec.endpoints):
                await monitor.refresh_members()
            monitor.start()
            self._stack.push_async_callback(monitor.stop)

    def _monitor(self, spec: PoolSpec, registry: Registry, board: Scoreboard) -> PoolMonitor:
        name = spec.name
        return PoolMonitor(
            spec, self.client.session,
            members=lambda: registry.members[name],
            on_members=lambda roots: registry.set_members(name, roots),
            stats=lambda root: board.by_id(replica_id(name, root)),
            clock=board.clock)

    async def stop(self) -> None:
        await self._stack.aclose()
