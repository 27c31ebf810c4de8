"""The `telemetry` section: metrics, the access log, OpenTelemetry traces."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.config.base import Strict


class TracingConfig(Strict):
    """OpenTelemetry traces over OTLP. Unset fields fall back to the standard `OTEL_*`
    environment variables, then to the SDK's defaults; `OTEL_SDK_DISABLED=true` wins."""

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] | None = Field(
        None, description="default: OTEL_TRACES_EXPORTER, else otlp")
    protocol: Literal["http/protobuf", "grpc"] | None = Field(
        None, description="default: OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL, else http/protobuf")
    endpoint: str | None = Field(
        None, description="collector base URL; default: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT")
    headers: dict[str, str] = Field({}, description="e.g. a backend's auth, as ${ENV}")
    service_name: str | None = Field(None, description="default: OTEL_SERVICE_NAME, else turnout")
    sample_ratio: float | None = Field(
        None, ge=0, le=1, description="default: OTEL_TRACES_SAMPLER, else always (parent-based)")
    # Prompts and completions go on spans only for these teams (never by default).
    capture_content: list[str] = []


class TelemetryConfig(Strict):
    metrics: bool = Field(True, description="GET /metrics (Prometheus)")
    access_log: bool = Field(True, description="one JSON line per request on turnout.access")
    tracing: TracingConfig = TracingConfig()  # type: ignore[call-arg]
