"""Operations endpoints: liveness, readiness, the failover state (read-only) and the
Prometheus metrics; and the separate ops listener (`server.ops_port`) that serves them
away from the public port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp
from uvicorn.server import ServerState

from gateway.http.asgi import Receive, Scope, Send, send_response
from gateway.registry import replica_id
from gateway.services import Services
from gateway.wire.base import get_status
from gateway.wire.limits import ServerLimits
from gateway.wire.server import HttpProtocol

_PROBE_TIMEOUT_S = 1.0
_OPS_LIMITS = ServerLimits(max_connections=256)  # scrapers and probes: a few at a time


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


class Readyz:
    """Ready when at least one deployment of some model can take traffic: a pool replica
    answers `/health`, or a provider is configured (with a key, or simulated).

    Replicas' health is what the pool monitors last saw (every `probe_interval_s`): a
    call probes nothing, so /readyz costs no upstream request however often it is asked.
    Only a replica not yet probed at all (just after start) is probed here."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.services
        if services.pipeline.draining:  # shutting down: no new traffic, please
            await send_response(send, 503, b'{"status":"draining"}', [])
            return
        registry = services.registry
        # The scoreboard the pool monitors report to (the one dispatch routes with).
        board = services.pipeline.dispatcher.runner.board
        known: dict[str, bool | None] = {
            root: board.by_id(replica_id(pool, root)).pool.healthy
            for pool, roots in registry.members.items() for root in roots}
        unknown = sorted(root for root, healthy in known.items() if healthy is None)
        probes = await asyncio.gather(*(get_status(services.client, root + "/health",
                                                   _PROBE_TIMEOUT_S) for root in unknown))
        known.update({root: status == 200 for root, status in zip(unknown, probes,
                                                                   strict=True)})
        healthy_pools = sum(1 for healthy in known.values() if healthy)
        providers = sorted({d.id for deps in registry.models.values() for d in deps
                            if d.pool is None})
        ready = bool(healthy_pools or providers)
        body = orjson.dumps({
            "status": "ready" if ready else "unavailable",
            "healthy_pool_endpoints": healthy_pools,
            "pool_endpoints": len(known),
            "providers": providers,
        })
        await send_response(send, 200 if ready else 503, body, [])


class FailoverDebug:
    """GET /debug/failover: circuit state and counters per deployment, the retry budget and
    the failover counters of this process (one worker: each has its own)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        failover = self.services.failover
        body = orjson.dumps(failover.snapshot() if failover is not None else {"enabled": False})
        await send_response(send, 200, body, [])


class MetricsEndpoint:
    """GET /metrics in the Prometheus text format (routed only while metrics are on)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.services.telemetry.metrics
        assert metrics is not None
        await send_response(send, 200, metrics.render(), [],
                            content_type=CONTENT_TYPE_LATEST.encode())


class OpsListener:
    """The ops endpoints on a port of their own (`server.ops_port`), served by our HTTP
    protocol in the worker's loop. With several workers each binds it (SO_REUSEPORT):
    /metrics adds every worker up whichever answers."""

    def __init__(self, app: ASGIApp) -> None:
        self._config = uvicorn.Config(app, lifespan="off", log_config=None,
                                      proxy_headers=False, access_log=False)
        self._config.load()
        self._state = ServerState()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool) -> int:
        """Listen; the port it got (`port` 0: any free one)."""
        loop = asyncio.get_running_loop()
        protocol: Callable[[], HttpProtocol] = lambda: HttpProtocol(  # noqa: E731
            self._config, self._state, {}, loop, _OPS_LIMITS)
        self._server = await loop.create_server(protocol, host, port, reuse_port=reuse_port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._state.connections):
            conn.shutdown()
        for task in list(self._state.tasks):
            task.cancel()
