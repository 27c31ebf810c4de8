"""OTLP export to real receivers started here: OTLP/HTTP (protobuf) configured through the
standard OTEL_* environment variables, and OTLP/gRPC configured in the config file. The
spans are decoded from the wire (ExportTraceServiceRequest); the app's shutdown flushes
the batch, so nothing is polled. And a collector that never answers cannot hold up the
gateway's shutdown."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from gateway.config.telemetry import TracingConfig
from gateway.telemetry.tracing import Tracing
from selfhost.sim import ThreadedSim
from tests.support.inproc import serving, sim_fixture

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Received:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def add(self, path: str, body: bytes) -> None:
        with self.lock:
            self.paths.append(path)
            self.requests.append(ExportTraceServiceRequest.FromString(body))

    def spans(self) -> dict[str, tuple[str, dict[str, Any], str]]:
        """Span name → (trace id, attributes, service.name)."""
        out = {}
        for req in self.requests:
            for rs in req.resource_spans:
                service = next(a.value.string_value for a in rs.resource.attributes
                               if a.key == "service.name")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {a.key: getattr(a.value, a.value.WhichOneof("value"))
                                 for a in span.attributes}
                        out[span.name] = (span.trace_id.hex(), attrs, service)
        return out


sim = sim_fixture()


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            received.add(self.path, body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: ExportTraceServiceRequest,  # the gRPC method name
                   context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
            received.add("Export", request.SerializeToString())
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", received
    server.stop(grace=None)


def config(sim: ThreadedSim, tracing: dict[str, Any]) -> dict[str, Any]:
    return {"providers": [{"name": "prov", "base_url": sim.url + "/v1"}],
            "models": {"m": {"deployments": [{"target": "prov", "model": "tiny"}]}},
            "telemetry": {"tracing": {"enabled": True, **tracing}}}


async def send_two(client: Any) -> None:
    for stream in (False, True):
        r = await client.post("/v1/chat/completions", headers={"traceparent": TRACEPARENT},
                              json={"model": "m", "stream": stream, "max_tokens": 3,
                                    "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200


async def test_otlp_http_export_configured_by_otel_env(
        sim: ThreadedSim, http_receiver: tuple[str, Received],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, received = http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "turnout-edge")
    async with serving(config(sim, {})) as gw:
        await send_two(gw.client)
    assert received.paths and set(received.paths) == {"/v1/traces"}
    spans = received.spans()
    assert set(spans) == {"chat m", "chat tiny", "turnout.admission", "turnout.route"}
    assert {trace_id for trace_id, _, _ in spans.values()} == {TRACE_ID}
    assert {service for _, _, service in spans.values()} == {"turnout-edge"}
    _, server, _ = spans["chat m"]
    assert server["gen_ai.request.model"] == "m" and server["gen_ai.usage.output_tokens"] == 3
    assert spans["chat tiny"][1]["gen_ai.provider.name"] == "openai"
    n = sum(len(ss.spans) for req in received.requests for rs in req.resource_spans
            for ss in rs.scope_spans)
    assert n == 8  # two requests, four spans each


async def test_otlp_grpc_export_configured_in_the_file(
        sim: ThreadedSim, grpc_receiver: tuple[str, Received]) -> None:
    url, received = grpc_receiver
    tracing = {"protocol": "grpc", "endpoint": url, "service_name": "gw-grpc"}
    async with serving(config(sim, tracing)) as gw:
        await send_two(gw.client)
    spans = received.spans()
    assert set(spans) == {"chat m", "chat tiny", "turnout.admission", "turnout.route"}
    assert {trace_id for trace_id, _, _ in spans.values()} == {TRACE_ID}
    assert {service for _, _, service in spans.values()} == {"gw-grpc"}
    assert spans["chat m"][1]["turnout.deployment"] == "prov/tiny"


async def test_otel_sdk_disabled_wins(sim: ThreadedSim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    async with serving(config(sim, {"exporter": "none"})) as gw:
        assert gw.services.telemetry.tracing is None


async def test_shutdown_never_waits_on_a_stuck_collector(
        caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    exported: list[int] = []

    class Stuck(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            release.wait(10)  # a collector that does not answer
            exported.append(len(spans))
            return SpanExportResult.SUCCESS

    tracing = Tracing(TracingConfig(enabled=True, exporter="none"))
    tracing.add_span_processor(BatchSpanProcessor(Stuck()))
    tracing.tracer.start_span("s").end()
    await tracing.shutdown(timeout_s=0.2)  # returns though the export is still stuck
    assert exported == [] and "spans still unexported" in caplog.text
    release.set()
