"""Lean spans and their OTLP encoding: what the sampler decides (as the SDK's ratio sampler
would), what a span records, and that the hand-written protobuf decodes, with the generated
classes, to the span that was recorded; the exporter's batches reach a real HTTP receiver."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from gateway.telemetry.otlp import Envelope, OtlpExport, Sender, Target, encode_span
from gateway.telemetry.spans import LeanSpan, Tracer, readable, sampler_from

RESOURCE = Resource.create({"service.name": "turnout-test"})


def decoded(spans: list[LeanSpan]) -> Any:
    body = Envelope.of(RESOURCE).request([encode_span(s) for s in spans])
    return ExportTraceServiceRequest.FromString(body)


def value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


def test_a_span_decodes_to_what_was_recorded() -> None:
    ended: list[LeanSpan] = []
    tracer = Tracer(ended.append)
    server = tracer.start_span("chat m", kind=SpanKind.SERVER,
                               attributes={"gen_ai.operation.name": "chat"})
    token = context.attach(trace.set_span_in_context(server))
    child = tracer.start_span("turnout.route")
    child.set_attributes({"s": "text", "yes": True, "no": False, "n": 7, "neg": -3,
                          "big": 2**40, "x": 0.25, "list": ["a", "b"], "nums": (1, 2)})
    child.set_attribute("skipped", None)
    child.add_event("gen_ai.first_token", {"turnout.ttft_s": 0.5}, 1_000)
    child.set_status(Status(StatusCode.ERROR, "upstream failed"))
    child.end()
    context.detach(token)
    server.update_name("chat m2")
    server.end()
    assert [s.name for s in ended] == ["turnout.route", "chat m2"]

    req = decoded(ended)
    (rs,) = req.resource_spans
    assert {a.key: value(a.value) for a in rs.resource.attributes}["service.name"] \
        == "turnout-test"
    (ss,) = rs.scope_spans
    assert ss.scope.name == "turnout"
    route, srv = ss.spans
    assert route.trace_id == srv.trace_id == server.get_span_context().trace_id.to_bytes(16,
                                                                                          "big")
    assert route.parent_span_id == srv.span_id and srv.parent_span_id == b""
    assert srv.kind == 2 and route.kind == 1  # SERVER, INTERNAL in OTLP's numbering
    assert srv.name == "chat m2"
    assert route.start_time_unix_nano <= route.end_time_unix_nano
    attrs = {a.key: value(a.value) for a in route.attributes}
    assert attrs == {"s": "text", "yes": True, "no": False, "n": 7, "neg": -3, "big": 2**40,
                     "x": 0.25, "list": ["a", "b"], "nums": [1, 2]}
    (event,) = route.events
    assert event.name == "gen_ai.first_token" and event.time_unix_nano == 1_000
    assert {a.key: value(a.value) for a in event.attributes} == {"turnout.ttft_s": 0.5}
    assert route.status.code == 2 and route.status.message == "upstream failed"
    assert not srv.HasField("status")  # unset: nothing sent


def test_remembered_attributes_decode_the_same_as_span_and_event_attributes() -> None:
    # The encoder remembers recurring (key, value) pairs by the field they are encoded as
    # (a span's attributes, an event's), a list as the tuple it encodes alike.
    ended: list[LeanSpan] = []
    tracer = Tracer(ended.append)
    attrs = {"team": "a", "models": ["m1", "m2"], "n": 3, "ids": ("x", "y")}
    for _ in range(3):
        span = tracer.start_span("s", attributes=attrs)
        span.add_event("e", attrs, 1)
        span.end()
    for span in decoded(ended).resource_spans[0].scope_spans[0].spans:
        expected = {"team": "a", "models": ["m1", "m2"], "n": 3, "ids": ["x", "y"]}
        assert {a.key: value(a.value) for a in span.attributes} == expected
        assert {a.key: value(a.value) for a in span.events[0].attributes} == expected


def test_equal_values_of_other_types_keep_their_own_type() -> None:
    # 0, 0.0 and False are equal (and hash alike): remembering the first would send the
    # others as its type.
    ended: list[LeanSpan] = []
    tracer = Tracer(ended.append)
    for v in (0, 0.0, False, 1, 1.0, True, (0, 1), (0.0, 1.0)):
        tracer.start_span("s", attributes={"temperature": v}).end()
    kinds = [(a.value.WhichOneof("value"), value(a.value))
             for span in decoded(ended).resource_spans[0].scope_spans[0].spans
             for a in span.attributes]
    assert kinds == [("int_value", 0), ("double_value", 0.0), ("bool_value", False),
                     ("int_value", 1), ("double_value", 1.0), ("bool_value", True),
                     ("array_value", [0, 1]), ("array_value", [0.0, 1.0])]
    assert [type(v) for _, arr in kinds[6:] for v in arr] == [int, int, float, float]


def test_an_ended_span_takes_no_more_and_reads_like_the_sdks() -> None:
    ended: list[LeanSpan] = []
    span = Tracer(ended.append).start_span("s", attributes={"a": [1, 2]})
    assert isinstance(span, LeanSpan) and span.is_recording()
    span.end()
    span.end()
    span.set_attribute("late", 1)
    assert len(ended) == 1 and "late" not in span.attributes and not span.is_recording()
    done = readable(span, RESOURCE)
    assert done.name == "s" and done.attributes == {"a": (1, 2)}
    assert done.context == span.get_span_context() and done.end_time == span.end_time


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.3, 1.0])
def test_new_traces_are_sampled_as_the_sdks_ratio_sampler_decides(ratio: float) -> None:
    tracer = Tracer(lambda s: None, ratio=ratio)
    sdk = TraceIdRatioBased(ratio)
    for _ in range(2000):
        span = tracer.start_span("root")
        ctx = span.get_span_context()
        expected = sdk.should_sample(None, ctx.trace_id, "root").decision
        assert ctx.trace_flags.sampled == (expected is Decision.RECORD_AND_SAMPLE)
        assert span.is_recording() == ctx.trace_flags.sampled
        assert isinstance(span, LeanSpan if ctx.trace_flags.sampled else NonRecordingSpan)


def test_children_follow_their_parent_whatever_the_ratio() -> None:
    tracer = Tracer(lambda s: None, ratio=0.0)
    for sampled in (True, False):
        parent = NonRecordingSpan(trace.SpanContext(
            0xABC, 0xDEF, True, trace.TraceFlags(int(sampled))))
        child = tracer.start_span("c", trace.set_span_in_context(parent))
        assert child.get_span_context().trace_id == 0xABC
        assert child.is_recording() is sampled


def test_the_sampler_comes_from_the_config_else_the_standard_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert sampler_from(0.25) == (True, 0.25)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    assert sampler_from(None) == (True, 1.0)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    assert sampler_from(None) == (False, 0.5)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    assert sampler_from(None) == (True, 0.0)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", bodies
    server.shutdown()
    server.server_close()


async def test_spans_are_batched_per_loop_turn_and_posted(
        receiver: tuple[str, list[bytes]]) -> None:
    url, bodies = receiver
    export = OtlpExport(Sender(Target(url, {}, False, 5, None), Envelope.of(RESOURCE)),
                        max_batch=3, interval_s=60)
    tracer = Tracer(export)
    for i in range(4):
        tracer.start_span(f"s{i}").end()
    await asyncio.sleep(0)  # the loop turn's encoding: a full batch of 3 goes at once
    assert export.close(5)  # the fourth with it
    names = [[s.name for s in ExportTraceServiceRequest.FromString(b).resource_spans[0]
              .scope_spans[0].spans] for b in bodies]
    assert names == [["s0", "s1", "s2"], ["s3"]]
    assert export.sender.sent == 4 and export.sender.dropped == 0


def test_a_collector_that_is_down_loses_spans_not_requests(
        caplog: pytest.LogCaptureFixture) -> None:
    from tests.support.procs import free_port

    sender = Sender(Target(f"http://127.0.0.1:{free_port()}/v1/traces", {}, True, 1, None),
                    Envelope.of(RESOURCE))
    sender.send([b"x", b"y"])
    assert sender.close(5)
    assert sender.dropped == 2 and "2 span(s) not exported" in caplog.text
