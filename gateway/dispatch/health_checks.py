"""Active health checks for deployments whose circuit is open, only while it is.

A pool replica is asked for vLLM's `/health`; a provider gets a 1-token chat request
built by its own adapter (so every dialect works, auth included), or `GET {base}/models`
when configured so (free, but it says nothing about inference). The last result is kept
on the breaker, where it gates half-open: a deployment still failing its check is not
handed a client's request as the probe. The loop starts when a circuit opens and ends
when none is open, so a healthy gateway runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from adapters import get_adapter
from gateway.canonical import CanonicalRequest, Deployment, UpstreamFailure, UpstreamRequest
from gateway.wire.base import HttpClient, get_status
from policies.breakers import Breaker, CircuitState

log = logging.getLogger("turnout.failover")


def _probe_request(dep: Deployment) -> CanonicalRequest:
    body = {"model": dep.model, "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1}
    return CanonicalRequest("chat", dep.model, body, request_id="turnout-health-check")


class CircuitProber:
    """Checks the deployments whose circuit is open, each `interval_s`, until none is.
    `wake` (the breakers' `on_open`) hands it a circuit that just opened."""

    def __init__(self, client: HttpClient, *, interval_s: float, timeout_s: float) -> None:
        self._client = client
        self._interval = interval_s
        self._timeout = timeout_s
        self._open: dict[str, Breaker] = {}  # by deployment id: the latest breaker
        self._task: asyncio.Task[None] | None = None
        self.checks_total = 0

    def wake(self, breaker: Breaker) -> None:
        """A circuit opened (called from the request that opened it)."""
        if breaker.deployment is None or breaker.deployment.health_check == "off":
            return
        self._open[breaker.deployment.id] = breaker
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            for key in [k for k, b in self._open.items() if b.state is not CircuitState.OPEN]:
                del self._open[key]
            if not self._open:
                return
            await asyncio.gather(*(self._check(b) for b in list(self._open.values())))
            await asyncio.sleep(self._interval)

    async def _check(self, breaker: Breaker) -> None:
        assert breaker.deployment is not None
        try:
            healthy = await self.probe(breaker.deployment)
        except Exception:  # a check must never take the loop down
            log.exception("health check of %s failed", breaker.deployment.id)
            healthy = False
        self.checks_total += 1
        if breaker.state is CircuitState.OPEN:
            breaker.health = healthy

    async def probe(self, dep: Deployment) -> bool:
        kind = dep.health_check
        if kind == "health":
            root = dep.target.base_url.removesuffix("/v1")
            return await get_status(self._client, root + "/health", self._timeout) == 200
        ureq = get_adapter(dep.dialect).build_request(_probe_request(dep), dep.target)
        if kind == "models":
            headers = {k: v for k, v in ureq.headers.items() if k != "content-type"}
            ureq = UpstreamRequest("GET", dep.target.base_url + "/models", headers, b"")
        deadline = self._client.loop.time() + self._timeout
        try:
            resp = await self._client.send(ureq, deadline)
            try:
                await resp.read(deadline)
            finally:
                resp.release()
        except (TimeoutError, UpstreamFailure):
            return False
        return resp.status < 300
