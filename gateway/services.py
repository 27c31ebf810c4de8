"""What a running gateway process holds, composed in one place: built at startup (the
app's lifespan), in dependency order, each part handed what it needs at construction;
read by the HTTP surfaces; torn down at shutdown in reverse order.

Telemetry is chosen here too: while tracing is on, the cache lookup, admission, planning
and each upstream attempt are wrapped in spans (`telemetry/traced.py`); while metrics are
on, every Redis round trip is timed (`MeasuredConnection`). With both off the stages run
as they are.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack

from gateway.accounting.accounts import Accounts, declared_principals
from gateway.accounting.admission import (
    Admission,
    AdmissionStage,
    Authenticator,
    PrincipalCache,
    reservation_ttl_ms,
)
from gateway.accounting.invalidation import (
    Announcer,
    Invalidations,
    Listener,
    LocalInvalidations,
)
from gateway.accounting.lease_holder import LeaseHolder
from gateway.accounting.metering import Meter
from gateway.batch.system import BatchSystem, start_batch
from gateway.cache import CacheStage, ResponseCache
from gateway.config import Config
from gateway.config.upstreams import KvEvents
from gateway.console.parts import Console, console_recorder
from gateway.dispatch.attempts import new_attempt
from gateway.dispatch.dispatcher import AttemptRunner, Dispatcher
from gateway.dispatch.failover import Failover
from gateway.dispatch.fallbacks import Fallbacks
from gateway.dispatch.health_checks import CircuitProber
from gateway.lifecycle import on_server_exit
from gateway.pipeline import Pipeline
from gateway.planner import Planner, PlanStage
from gateway.registry import Registry, replica_id
from gateway.simulated import Simulators, start_simulators
from gateway.store import RedisStore, Store, open_store
from gateway.store.breaker import StoreBreaker
from gateway.telemetry import Telemetry
from gateway.telemetry.metrics import MeasuredConnection
from gateway.telemetry.traced import TracedAdmission, TracedAttempts, TracedCache, TracedPlanner
from gateway.telemetry.tracing import Tracing
from gateway.wire.base import RedisConnection, get, post_json
from gateway.wire.http_client import UpstreamClient
from gateway.wire.redis_client import open_redis
from policies.breakers import Breakers
from policies.kv_index import KvIndex, KvView
from policies.leases import MAX_AGE_S
from policies.lockout import Lockout
from policies.routing.base import load
from policies.scoreboard import Scoreboard
from selfhost.kv_blocks import DEFAULT_SEED
from selfhost.kv_events import KvEventsMonitor, KvEventsSpec
from selfhost.kv_keys import RequestKeys
from selfhost.kv_tokens import HfTokenizer
from selfhost.lora import AdapterDirectory
from selfhost.pool import PoolMonitor, PoolSpec
from selfhost.sim_kv import SimTokenizer

log = logging.getLogger("turnout")


class Services:
    pipeline: Pipeline
    registry: Registry
    store: Store
    client: UpstreamClient
    authenticator: Authenticator
    accounts: Accounts
    cache: ResponseCache | None  # None: the config caches nothing
    failover: Failover | None  # None: failover is switched off
    console: Console | None  # None: the console is off
    telemetry: Telemetry
    batch: BatchSystem | None = None  # None: no Files and Batch APIs (`batch.enabled`)

    def __init__(self, config: Config, *, batch_worker: bool = False) -> None:
        """`batch_worker`: this process runs the batch lane (`turnout batch-worker`)
        whatever `batch.run_in_serve` says."""
        self.config = config
        self.batch_worker = batch_worker
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        cfg, stack = self.config, self._stack
        # The loop, asked for once: on Python 3.11 each get_running_loop() is a getpid().
        loop = asyncio.get_running_loop()
        simulated = await start_simulators(cfg, stack)
        self.registry = registry = Registry(cfg, simulated.roots)
        self.client = client = UpstreamClient(
            connect_timeout=cfg.server.timeouts.connect_s, limits=cfg.upstream.limits(),
            egress=registry.egress(), trust_env=cfg.upstream.trust_env)
        await client.start()
        stack.push_async_callback(client.close)

        # Routing and failover.
        board = Scoreboard()
        prober = CircuitProber(client, interval_s=cfg.failover.breaker.health_check_interval_s,
                               timeout_s=cfg.failover.breaker.health_check_timeout_s)
        stack.push_async_callback(prober.stop)
        tracing = Tracing.build(cfg.telemetry.tracing)  # None: off
        tracer = tracing.tracer if tracing is not None else None
        kv = await self._kv_events(registry, simulated)  # None: no pool publishes them
        adapters = await self._adapters(registry, board)  # None: no pool serves adapters
        planner: PlanStage = Planner(cfg, board, kv, adapters.has if adapters else None)
        if tracer is not None:
            planner = TracedPlanner(planner, tracer)
        failover = self.failover = Failover(
            cfg, board, Fallbacks(cfg, registry, planner),
            on_open=prober.wake) if cfg.failover.enabled else None
        recorder = console_recorder(cfg)  # settled requests, sampled while a console is open
        self.telemetry = telemetry = Telemetry(cfg, tracing, failover, recorder)
        stack.push_async_callback(telemetry.shutdown)  # after everything else: flushes spans
        await self._monitor_pools(registry, board,
                                  failover.breakers if failover is not None else None)

        # State: the store, teams and keys, admission, the cache.
        redis = self._redis()
        self.store = store = open_store(redis, stream_maxlen=cfg.metering.stream_maxlen)
        stack.push_async_callback(store.close)
        principals = PrincipalCache(cfg.auth.cache_ttl_s)
        ttl_ms = reservation_ttl_ms(cfg.admission, cfg.server.timeouts.total_s)
        leases = self._lease_holder(store, loop, ttl_ms)
        listeners: list[Listener] = [principals, *([leases] if leases is not None else [])]
        announcer: Announcer = LocalInvalidations(listeners)
        if isinstance(store, RedisStore):  # every process hears every change
            announcer = invalidations = Invalidations(store, listeners)
            await invalidations.start()
            stack.push_async_callback(invalidations.close)
        if leases is not None:
            stack.push_async_callback(leases.close)  # before the meter and store close
        self.accounts = accounts = Accounts(store, announcer)
        await accounts.start(cfg.teams)
        stack.push_async_callback(accounts.stop)
        self.authenticator = Authenticator(
            store, principals, required=cfg.auth_required, admin_key=cfg.auth.admin_key,
            declared=declared_principals(cfg.teams),
            lockout=Lockout(cfg.auth.lockout.failures, cfg.auth.lockout.window_s),
            restore=accounts.restore)
        meter = Meter(store)
        stack.push_async_callback(meter.close)  # runs before the store closes
        admission: AdmissionStage = Admission(store, cfg.admission, ttl_ms, meter, leases,
                                              announcer)
        self.cache = ResponseCache.build(store, cfg)
        cache: CacheStage | None = self.cache
        if self.cache is not None:
            stack.push_async_callback(self.cache.close)  # pending writes land first
        if tracer is not None:
            admission = TracedAdmission(admission, tracer)
            cache = TracedCache(cache, tracer) if cache is not None else None

        # Dispatch, and the pipeline that puts it all in order.
        runner = AttemptRunner(client, board, cfg.server.timeouts,
                               failover.breakers if failover is not None else None,
                               TracedAttempts(tracer) if tracer is not None else new_attempt)
        self.pipeline = Pipeline(
            registry=registry, authenticator=self.authenticator, cache=cache, admission=admission,
            planner=planner, dispatcher=Dispatcher(runner, failover), meter=meter,
            telemetry=telemetry if telemetry.active else None, loop=loop,
            max_body=cfg.server.max_body_bytes, adapters=adapters)
        self.console = None
        if recorder is not None:
            self.console = Console(cfg, recorder, store, board, failover,
                                   lambda: registry.models)
            self.console.start()
            stack.push_async_callback(self.console.stop)
        if cfg.batch.enabled or self.batch_worker:  # its lane: the pipeline's stages
            self.batch = await start_batch(
                cfg, store, self.pipeline, board, telemetry,
                run_lane=self.batch_worker or cfg.batch.run_in_serve)
            stack.push_async_callback(self.batch.stop)  # first: lines given back
        log.info("models: %s", ", ".join(
            f"{name} → {', '.join(d.id for d in deps)}" for name, deps in registry.models.items()))
        # Everything built so far lives as long as the process: keep the garbage collector
        # from walking it again on every full collection while requests are served.
        gc.freeze()
        # SIGTERM: from now on /readyz says 503 and what is in flight has the drain's time.
        on_server_exit(lambda: self.pipeline.drain(cfg.server.drain_timeout_s))

    async def _kv_events(self, registry: Registry, simulated: Simulators) -> KvView | None:
        """For every pool whose replicas publish KV events: how its requests are keyed, and
        subscribers that keep the index of what each replica holds."""
        pools = [p for p in self.config.pools if p.kv_events is not None]
        if not pools:
            return None
        view = KvView(KvIndex())
        for pool in pools:
            ev = pool.kv_events
            assert ev is not None
            tokenizer = (SimTokenizer() if pool.simulate is not None or ev.tokenizer is None
                         else HfTokenizer(ev.tokenizer))
            view.keyers[pool.name] = RequestKeys(
                tokenizer, algo=ev.hash_algo, seed=ev.hash_seed or DEFAULT_SEED,
                adapter_of=lambda d: (d.target.upstream_model, d.adapter_path)
                if d.adapter_path is not None else None)
            ports = {root: (r.port, r.replay_port) for root, r in ev.replicas.items()}
            monitor = self._kv_monitor(pool.name, ev, view.index, registry,
                                       {**ports, **simulated.kv_ports})
            await monitor.start()
            self._stack.push_async_callback(monitor.stop)
        return view

    async def _adapters(self, registry: Registry, board: Scoreboard) -> AdapterDirectory | None:
        """Which replica has which LoRA adapter, for pools serving adapter deployments."""
        cfg, client = self.config, self.client
        pools = {dc.target for mc in cfg.models.values() for dc in mc.deployments
                 if dc.adapter is not None}
        if not pools:
            return None
        settings = {p.name: p.lora for p in cfg.pools if p.name in pools}
        directory = AdapterDirectory(
            lambda url, timeout_s: get(client, url, timeout_s),
            lambda url, body, timeout_s: post_json(client, url, body, timeout_s),
            members=lambda pool: registry.members.get(pool, []),
            load=lambda d: load(board, d),
            dynamic={name: s.dynamic_loading for name, s in settings.items()},
            refresh_s=min(s.refresh_s for s in settings.values()))
        await directory.start()
        self._stack.push_async_callback(directory.stop)
        return directory

    @staticmethod
    def _kv_monitor(name: str, ev: KvEvents, index: KvIndex, registry: Registry,
                    ports: dict[str, tuple[int, int]]) -> KvEventsMonitor:
        return KvEventsMonitor(
            name, KvEventsSpec(ev.port, ev.replay_port, ev.topic, ev.heartbeat_s), index,
            members=lambda: registry.members[name],
            replica_id=lambda root: replica_id(name, root), ports=ports)

    def _redis(self) -> RedisConnection | None:
        """The connection to Redis (None: no Redis configured), timed while metrics are on:
        one node, the cluster it belongs to, or a Sentinel's master (`open_redis`)."""
        if self.config.redis is None:
            return None
        # Failing fast while it is down (StoreBreaker), each round trip timed (metrics on).
        redis: RedisConnection = StoreBreaker(open_redis(self.config.redis.url))
        metrics = self.telemetry.metrics
        return MeasuredConnection(redis, metrics) if metrics is not None else redis

    def _lease_holder(self, store: Store, loop: asyncio.AbstractEventLoop,
                      ttl_ms: int) -> LeaseHolder | None:
        """With Redis and `admission.leases`: this process's leases."""
        if not isinstance(store, RedisStore) or not self.config.admission.leases:
            return None
        # A request admitted from a grant (at most MAX_AGE_S after it) must settle before
        # the grant's budget reservation can lapse.
        margin_s = MAX_AGE_S + 5
        if ttl_ms < (self.config.server.timeouts.total_s + margin_s) * 1000:
            log.warning("admission.leases: off, as admission.reservation_ttl_s is under"
                        " timeouts.total_s + %gs", margin_s)
            return None
        return LeaseHolder(store, loop, ttl_ms=ttl_ms)

    async def _monitor_pools(self, registry: Registry, board: Scoreboard,
                             breakers: Breakers | None) -> None:
        """Probe and scrape every pool replica; resolve DNS pools before serving. A replica
        the monitor sees back from an outage is the circuit breakers' news at once: their
        own health check (every `health_check_interval_s`) and cooldown would otherwise
        hold its probe back after routing already wants it."""
        for pool in self.config.pools:
            simulated = registry.simulated.get(pool.name)
            spec = PoolSpec(pool.name, tuple(simulated or pool.endpoints), pool.resolver,
                            pool.dns_interval_s, pool.probe_interval_s, pool.scrape_interval_s,
                            max_num_seqs=pool.max_num_seqs)
            monitor = self._monitor(spec, registry, board, breakers)
            if any(e.startswith("dns://") for e in spec.endpoints):
                await monitor.refresh_members()
            monitor.start()
            self._stack.push_async_callback(monitor.stop)

    def _monitor(self, spec: PoolSpec, registry: Registry, board: Scoreboard,
                 breakers: Breakers | None) -> PoolMonitor:
        name, client = spec.name, self.client
        recovered: Callable[[str], None] | None = None
        if breakers is not None:
            def recovered(root: str) -> None:
                breakers.healthy_now(replica_id(name, root))
        return PoolMonitor(
            spec, lambda url, timeout_s: get(client, url, timeout_s),
            members=lambda: registry.members[name],
            on_members=lambda roots: registry.set_members(name, roots),
            stats=lambda root: board.by_id(replica_id(name, root)),
            clock=board.clock, on_recovered=recovered)

    async def stop(self) -> None:
        await self._stack.aclose()
