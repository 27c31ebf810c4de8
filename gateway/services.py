"""What a running gateway process holds: built at startup (the app's lifespan), read by
the HTTP surfaces, torn down at shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import AsyncExitStack

from gateway.accounts import Accounts
from gateway.cache import ResponseCache
from gateway.config import Config
from gateway.dispatch import Dispatcher
from gateway.failover import Failover
from gateway.fallbacks import Fallbacks
from gateway.health_checks import CircuitProber
from gateway.invalidation import Invalidations
from gateway.leases import Leases
from gateway.metering import Meter
from gateway.pipeline import Pipeline
from gateway.registry import Registry, replica_id
from gateway.routing import Router
from gateway.simulated import start_simulators
from gateway.store import RedisStore, Store, open_store
from gateway.telemetry import Telemetry
from gateway.upstream import UpstreamClient
from policies.leases import MAX_AGE_S
from policies.scoreboard import Scoreboard
from selfhost.pool import PoolMonitor, PoolSpec

log = logging.getLogger("turnout")


class Services:
    pipeline: Pipeline
    store: Store
    client: UpstreamClient
    accounts: Accounts
    meter: Meter
    cache: ResponseCache | None  # None: the config caches nothing
    failover: Failover | None  # None: failover is switched off

    def __init__(self, config: Config) -> None:
        self.config = config
        self.max_body = config.server.max_body_bytes
        self._stack = AsyncExitStack()
        self.telemetry = Telemetry(config)  # before start: the app routes /metrics by it

    async def start(self) -> None:
        cfg = self.config
        # The loop, asked for once: on Python 3.11 each get_running_loop() is a getpid().
        self.loop = asyncio.get_running_loop()
        self._stack.push_async_callback(self.telemetry.shutdown)  # last: flushes spans
        simulated = await start_simulators(cfg, self._stack)
        registry = Registry(cfg, simulated)
        self.client = UpstreamClient(connect_timeout=cfg.server.timeouts.connect_s)
        await self.client.start()
        self._stack.push_async_callback(self.client.close)
        self.store = open_store(cfg.redis.url if cfg.redis else None,
                                stream_maxlen=cfg.metering.stream_maxlen)
        self.telemetry.measure(self.store)
        self._stack.push_async_callback(self.store.close)
        self.accounts = Accounts(self.store, required=cfg.auth_required,
                                 admin_key=cfg.auth.admin_key, cache_ttl_s=cfg.auth.cache_ttl_s)
        invalidations = await self._invalidations()
        await self.accounts.start(cfg.teams)
        self._stack.push_async_callback(self.accounts.stop)
        self.meter = Meter(self.store)
        self.meter.observer = self.telemetry.settled if self.telemetry.active else None
        self._stack.push_async_callback(self.meter.close)  # runs before the store closes
        self.cache = self.telemetry.cache(self.store, cfg)  # None: nothing is cached
        if self.cache is not None:
            self._stack.push_async_callback(self.cache.close)  # pending writes land first
        board = Scoreboard()
        await self._monitor_pools(registry, board)
        router = self.telemetry.router(cfg, board)  # traced while tracing is on
        self.failover = self._failover(registry, router, board)
        dispatcher = Dispatcher(self.client, board, cfg.server.timeouts, self.failover)
        self.telemetry.instrument(dispatcher, self.failover)
        admission = self.telemetry.admission(self.store, cfg.admission,
                                             cfg.server.timeouts.total_s)
        if invalidations is not None and cfg.admission.leases:
            admission.leases = self._leases(invalidations, admission.ttl_ms)
        self.pipeline = Pipeline(registry, router, dispatcher, self.accounts, admission,
                                 self.meter, self.cache)
        log.info("models: %s", ", ".join(
            f"{name} → {', '.join(d.id for d in deps)}" for name, deps in registry.models.items()))
        # Everything built so far lives as long as the process: keep the garbage collector
        # from walking it again on every full collection while requests are served.
        gc.freeze()

    async def _invalidations(self) -> Invalidations | None:
        """With Redis: key and policy changes, heard from every process."""
        if not isinstance(self.store, RedisStore):
            return None
        invalidations = Invalidations(self.store)
        invalidations.handlers.append(self.accounts.forget)
        invalidations.on_down.append(self.accounts.forget_all)
        invalidations.on_missed.append(self.accounts.forget_all)
        self.accounts.invalidations = invalidations
        await invalidations.start()
        self._stack.push_async_callback(invalidations.close)
        return invalidations

    def _leases(self, invalidations: Invalidations, ttl_ms: int) -> Leases | None:
        assert isinstance(self.store, RedisStore)
        # A request admitted from a grant (at most MAX_AGE_S after it) must settle before
        # the grant's budget reservation can lapse.
        margin_s = MAX_AGE_S + 5
        if ttl_ms < (self.config.server.timeouts.total_s + margin_s) * 1000:
            log.warning("admission.leases: off, as admission.reservation_ttl_s is under"
                        " timeouts.total_s + %gs", margin_s)
            return None
        leases = Leases(self.store, self.loop, ttl_ms=ttl_ms, live=lambda: invalidations.live)
        invalidations.handlers.append(lambda change: leases.drop(change.team, change.key_id))
        invalidations.on_down.append(leases.drop_all)
        self.telemetry.watch_leases(leases)
        self._stack.push_async_callback(leases.close)  # before the meter and store close
        return leases

    def _failover(self, registry: Registry, router: Router, board: Scoreboard
                  ) -> Failover | None:
        fc = self.config.failover
        if not fc.enabled:
            return None
        failover = Failover(self.config, board, Fallbacks(self.config, registry, router))
        prober = CircuitProber(self.client, failover, interval_s=fc.breaker.health_check_interval_s,
                               timeout_s=fc.breaker.health_check_timeout_s)
        failover.breakers.on_open = prober.wake  # checks run only while a circuit is open
        self._stack.push_async_callback(prober.stop)
        return failover

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
            spec, self.client.get,
            members=lambda: registry.members[name],
            on_members=lambda roots: registry.set_members(name, roots),
            stats=lambda root: board.by_id(replica_id(name, root)),
            clock=board.clock)

    async def stop(self) -> None:
        await self._stack.aclose()
