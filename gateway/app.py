"""The ASGI application factory."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.batch.api import BatchAPI
from gateway.canonical import Operation
from gateway.config import Config, load_config
from gateway.console.http import ConsoleApp
from gateway.errors import GatewayError
from gateway.http import asgi
from gateway.http.admin import AdminAPI
from gateway.http.anthropic_format import ANTHROPIC
from gateway.http.asgi import PublicNames
from gateway.http.client_format import ClientFormat
from gateway.http.count_tokens import CountTokensEndpoint
from gateway.http.models import ModelsEndpoint
from gateway.http.openai_format import OPENAI, error_body
from gateway.http.openapi import OpenApiEndpoint
from gateway.http.ops import FailoverDebug, MetricsEndpoint, OpsListener, Readyz, healthz
from gateway.http.responses_api import (
    ResponsesEndpoint,
    StoredResponseEndpoint,
    StoredResponses,
)
from gateway.services import Services

CONFIG_ENV = "TURNOUT_CONFIG"


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and wrong methods, in OpenAI's error shape like everything else.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: f"no route for {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}
    err = GatewayError(status, message.get(status, "request failed"),
                       code="not_found" if status == 404 else None)
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    return Response(error_body(err), status, headers, media_type="application/json")


class LLMEndpoint:
    """One POST endpoint of a client format: the request runs the pipeline. `public`:
    the responses' deployment names rewritten (`server.deployment_header`); None: as
    they are, at no cost."""

    def __init__(self, op: Operation, services: Services, fmt: ClientFormat,
                 public: PublicNames | None = None) -> None:
        self.op = op
        self.services = services
        self.fmt = fmt
        self.public = public

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send
                       ) -> None:
        if self.public is not None:
            send = self.public.wrap(send)
        await self.services.pipeline.serve(scope, receive, send, self.op, self.fmt)


def create_app(config: Config) -> FastPaths:
    services = Services(config)

    server = config.server
    ops = (Starlette(routes=ops_routes(services, config, True),
                     exception_handlers={HTTPException: _http_error})
           if server.ops_port is not None else None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.start()
        listener = None
        try:
            if ops is not None and server.ops_port is not None:
                listener = OpsListener(ops)
                # Every worker binds it (SO_REUSEPORT: `--workers` may differ from
                # server.workers, so always).
                port = await listener.start(server.ops_host or server.host, server.ops_port,
                                            reuse_port=True)
                logging.getLogger("turnout").info("ops endpoints on port %d", port)
            yield
        finally:
            if listener is not None:
                await listener.stop()
            await services.stop()

    public = (PublicNames(server.deployment_header, [p.name for p in config.pools])
              if server.deployment_header != "id" else None)
    stored = StoredResponses(services, config.responses.store_ttl_s)
    routes = [
        Route("/v1/chat/completions", LLMEndpoint("chat", services, OPENAI, public),
              methods=["POST"]),
        Route("/v1/completions", LLMEndpoint("completions", services, OPENAI, public),
              methods=["POST"]),
        Route("/v1/embeddings", LLMEndpoint("embeddings", services, OPENAI, public),
              methods=["POST"]),
        Route("/v1/messages", LLMEndpoint("chat", services, ANTHROPIC, public),
              methods=["POST"]),
        Route("/v1/messages/count_tokens", CountTokensEndpoint(services), methods=["POST"]),
        Route("/v1/responses", ResponsesEndpoint(services, stored, public), methods=["POST"]),
        Route("/v1/responses/{response_id}", StoredResponseEndpoint(services, stored),
              methods=["GET", "DELETE"]),
        Route("/v1/responses/{response_id}/input_items",
              StoredResponseEndpoint(services, stored, items=True), methods=["GET"]),
        Route("/v1/models", ModelsEndpoint(services), methods=["GET"]),
        Route("/openapi.json", OpenApiEndpoint(config), methods=["GET"]),
        Route("/admin/{rest:path}", AdminAPI(services), methods=["GET", "POST", "PUT", "DELETE"]),
        *ops_routes(services, config, ops is None),
    ]
    if config.batch.enabled:  # gateway/batch: the Files and Batch APIs
        batch_api = BatchAPI(services)
        routes += [Route(path, batch_api, methods=["GET", "POST", "DELETE"]) for path in
                   ("/v1/files", "/v1/files/{rest:path}", "/v1/batches",
                    "/v1/batches/{rest:path}")]
    if config.console.on(config.auth.admin_key):  # gateway/console: its own auth
        console = ConsoleApp(services)
        every = ["GET", "POST", "PUT", "DELETE"]
        routes += [Route("/console", console, methods=every),
                   Route("/console/{rest:path}", console, methods=every)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.services = services
    hot = {route.path: route.app for route in routes if route.path.startswith("/v1/")
           and route.methods == {"POST"}}
    return FastPaths(app, hot)


class FastPaths:
    """The LLM endpoints by exact path, ahead of Starlette's router and middleware (a few
    µs a request); everything else, lifespan included, goes through Starlette."""

    def __init__(self, app: Starlette, post_routes: dict[str, ASGIApp]) -> None:
        self.app = app
        self.state = app.state
        self._post = post_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._post.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def ops_routes(services: Services, config: Config, internals: bool) -> list[Route]:
    """Liveness and readiness (load balancers probe the public port too); with
    `internals`, the failover state and the metrics (on the ops port once there is one)."""
    routes = [Route("/healthz", healthz, methods=["GET"]),
              Route("/readyz", Readyz(services), methods=["GET"])]
    if internals:
        routes.append(Route("/debug/failover", FailoverDebug(services), methods=["GET"]))
        if config.telemetry.metrics:  # Prometheus
            routes.append(Route("/metrics", MetricsEndpoint(services), methods=["GET"]))
    return routes


def configure_logging() -> None:
    """Once per process: uvicorn's spawned workers do not inherit the CLI's setup."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def app_from_env() -> FastPaths:
    """Factory for `uvicorn --factory` and multi-worker serving: config path from the env."""
    configure_logging()
    return create_app(load_config(os.environ[CONFIG_ENV]))
