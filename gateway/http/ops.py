"""Operations endpoints: liveness, readiness, and the failover state (read-only)."""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.asgi import Receive, Scope, Send, send_response
from gateway.services import Services

_PROBE_TIMEOUT_S = 1.0


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


class Readyz:
    """Ready when at least one deployment of some model can take traffic: a pool replica
    answers `/health`, or a provider is configured (with a key, or simulated)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry = self.services.pipeline.registry
        client = self.services.client
        roots = sorted({r for rs in registry.members.values() for r in rs})
        probes = await asyncio.gather(
            *(client.get_status(r + "/health", _PROBE_TIMEOUT_S) for r in roots)
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
