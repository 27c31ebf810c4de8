"""Operations endpoints: liveness, readiness, the failover state (read-only) and the
Prometheus metrics."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.asgi import Receive, Scope, Send, send_response
from gateway.services import Services
from gateway.wire.base import get_status

_PROBE_TIMEOUT_S = 1.0


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


class Readyz:
    """Ready when at least one deployment of some model can take traffic: a pool replica
    answers `/health`, or a provider is configured (with a key, or simulated)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry = self.services.registry
        client = self.services.client
        roots = sorted({r for rs in registry.members.values() for r in rs})
        probes = await asyncio.gather(
            *(get_status(client, r + "/health", _PROBE_TIMEOUT_S) for r in roots)
        )
        healthy_pools = [r for r, status in zip(roots, probes, strict=True) if status == 200]
        providers = sorted({d.id for deps in registry.models.values() for d in deps
                            if d.pool is None})
        ready = bool(healthy_pools or providers)
        body = orjson.dumps({
            "status": "ready" if ready else "unavailable",
            "healthy_pool_endpoints": len(healthy_pools),
            "pool_endpoints": len(roots),
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
