"""The `server`, `upstream` and `redis` sections: what clients, upstreams and the store
connection may hold, and how the server runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.base import Strict
from gateway.wire.limits import ClientLimits, ServerLimits
from gateway.wire.redis_url import parse_target

_SERVER_LIMITS, _CLIENT_LIMITS = ServerLimits(), ClientLimits()  # the defaults, written once


class Timeouts(Strict):
    connect_s: float = Field(5.0, gt=0)
    first_token_s: float = Field(60.0, gt=0, description="upstream response headers / first chunk")
    idle_s: float = Field(60.0, gt=0, description="longest gap between two streamed chunks")
    total_s: float = Field(600.0, gt=0)


class ServerLimitsConfig(Strict):
    """What a client may hold (gateway/wire/server.py; `http: httptools` has only
    uvicorn's `limit_concurrency`, set to max_connections)."""

    max_connections: int = Field(_SERVER_LIMITS.max_connections, ge=1, description=(
        "per process; more are answered 503 and closed (also kept under the open-file"
        " limit)"))
    max_head_bytes: int = Field(_SERVER_LIMITS.max_head_bytes, ge=1024,
                                description="request line and headers; more: 431")
    header_timeout_s: float = Field(_SERVER_LIMITS.header_timeout_s, gt=0, description=(
        "from a request's first byte to the end of its head; later: 408"))
    request_timeout_s: float = Field(_SERVER_LIMITS.request_timeout_s, gt=0, description=(
        "from a request's first byte to the end of its body; later: 408"))


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    timeouts: Timeouts = Timeouts()  # type: ignore[call-arg]
    # The HTTP/1.1 protocol uvicorn runs: ours (gateway/wire/server.py, lighter), or
    # uvicorn's own httptools one, kept as the fallback it replaces.
    http: Literal["turnout", "httptools"] = "turnout"
    # After SIGTERM: how long requests and streams in flight may run on (new connections
    # are refused, /readyz says 503); what still runs then ends with an error event.
    drain_timeout_s: int = Field(30, ge=1, le=3600)
    # How long an idle keep-alive connection is kept: longer than clients' pools keep
    # theirs (httpx 5 s, aiohttp 15 s; Node's undici reads the `keep-alive: timeout=N`
    # header sent with each response), so the client, not the server, ends it and never
    # sends a request into a connection the server is closing (nginx: 75 s).
    # A new connection's first request must start within limits.header_timeout_s.
    keep_alive_s: int = Field(75, ge=1, le=3600)
    limits: ServerLimitsConfig = ServerLimitsConfig()  # type: ignore[call-arg]
    # A second listener for /metrics, /debug/failover, /readyz and /healthz; once set,
    # the first two are no longer served on `port`.
    ops_port: int | None = Field(None, ge=0, le=65535)
    ops_host: str | None = Field(None, description="default: host")
    # x-turnout-deployment: the deployment's id (a pool replica's names its address),
    # only its provider or pool name, or no header.
    deployment_header: Literal["id", "name", "off"] = "id"

    @model_validator(mode="after")
    def _ops_port(self) -> ServerConfig:
        if self.ops_port is not None and self.ops_port == self.port and self.port:
            raise ValueError("ops_port: must differ from port")
        return self


class UpstreamConfig(Strict):
    """What the upstream HTTP client accepts (gateway/wire/http_client.py); over a cap the
    attempt fails as upstream_protocol_error (502) and its connection is dropped."""

    trust_env: bool = Field(True, description="HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY")
    max_headers: int = Field(_CLIENT_LIMITS.max_headers, ge=1)
    max_header_bytes: int = Field(_CLIENT_LIMITS.max_header_bytes, ge=256,
                                  description="one header, name and value")
    max_body_bytes: int = Field(_CLIENT_LIMITS.max_body_bytes, ge=1024,
                                description="a non-streamed answer, decoded")
    max_error_body_bytes: int = Field(_CLIENT_LIMITS.max_error_body_bytes, ge=1024,
                                      description="an error answer (3xx to 5xx)")
    max_sse_event_bytes: int = Field(_CLIENT_LIMITS.max_sse_event_bytes, ge=1024,
                                     description="one streamed event, its lines together")
    max_decompression_ratio: float = Field(_CLIENT_LIMITS.max_decompression_ratio, ge=1,
                                           description="decoded/encoded, past the first MiB")

    def limits(self) -> ClientLimits:
        return ClientLimits(**self.model_dump(exclude={"trust_env"}))


class RedisConfig(Strict):
    url: str

    @field_validator("url")
    @classmethod
    def _parsed(cls, v: str) -> str:
        parse_target(v)  # what the store will connect with; its errors never quote the URL
        return v
