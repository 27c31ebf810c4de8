"""The ASGI application factory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import Config, load_config
from gateway.errors import GatewayError
from gateway.http.admin import AdminAPI
from gateway.http.openai import ModelsEndpoint, OpenAIEndpoint
from gateway.http.openai_schema import error_body
from gateway.http.ops import Readyz, healthz
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


def create_app(config: Config) -> Starlette:
    services = Services(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    routes = [
        Route("/v1/chat/completions", OpenAIEndpoint("chat", services), methods=["POST"]),
        Route("/v1/completions", OpenAIEndpoint("completions", services), methods=["POST"]),
        Route("/v1/embeddings", OpenAIEndpoint("embeddings", services), methods=["POST"]),
        Route("/v1/models", ModelsEndpoint(services), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", Readyz(services), methods=["GET"]),
        Route("/admin/{rest:path}", AdminAPI(services), methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.services = services
    return app


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and multi-worker serving: config path from the env."""
    return create_app(load_config(os.environ[CONFIG_ENV]))
