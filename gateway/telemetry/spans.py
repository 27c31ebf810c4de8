"""Lean spans: the OpenTelemetry API's `Span`, recorded with a fraction of the SDK's work.

Profiling the gateway with every request traced showed the SDK's span machinery (a
sampler object, attribute validation behind a lock per span, a readable copy per span at
its end, a span processor's queue and condition) costing about as much as the rest of a
request. A request's spans are made by our own code with values we control, so `Tracer`
records them plainly: ids from `random.getrandbits` (as the SDK's generator), parent-based
ratio sampling decided from the trace id as the SDK's `TraceIdRatioBased` does (so a trace
is sampled alike here and in any SDK downstream), attributes in a dict. A span that ends is
handed to `Tracer.sink`, which batches it for export off the event loop (`otlp.py`) or
gives it to SDK span processors (`readable`: the console and gRPC exporters, tests).

Sampled out, a span is the API's `NonRecordingSpan`: only its context, passed upstream.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import Attributes, AttributeValue

SCOPE = "turnout"
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_BITS_64 = (1 << 64) - 1
_UNSET = Status(StatusCode.UNSET)  # immutable: shared by every span until one sets its own


class LeanSpan(trace.Span):
    """A recording span. Its fields are read by the exporters once it has ended."""

    __slots__ = ("attributes", "context", "end_time", "events", "kind", "name", "parent",
                 "start_time", "status", "tracer")

    def __init__(self, tracer: Tracer, name: str, context: SpanContext,
                 parent: SpanContext | None, kind: SpanKind,
                 attributes: Mapping[str, AttributeValue] | None) -> None:
        self.tracer = tracer
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, AttributeValue] = dict(attributes) if attributes else {}
        self.events: list[tuple[str, int, Attributes]] = []
        self.status = _UNSET
        self.start_time = time.time_ns()
        self.end_time: int | None = None

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self.end_time is None and value is not None:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self.end_time is None:
            self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Attributes = None,
                  timestamp: int | None = None) -> None:
        if self.end_time is None:
            self.events.append((name, timestamp or time.time_ns(), attributes))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        pass  # the gateway links no spans

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is None:
            self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self.add_event("exception", {"exception.type": type(exception).__name__,
                                     "exception.message": str(exception),
                                     **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is None:
            self.end_time = end_time or time.time_ns()
            self.tracer.sink(self)


def sampler_from(ratio: float | None) -> tuple[bool, float]:
    """(parent-based, ratio for new traces): the configured ratio (parent-based), else the
    standard OTEL_TRACES_SAMPLER(_ARG), else always on, parent-based (the SDK's default)."""
    if ratio is not None:
        return True, ratio
    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    parent_based = name.startswith("parentbased_")
    kind = name.removeprefix("parentbased_")
    if kind == "always_off":
        return parent_based, 0.0
    if kind == "traceidratio":
        try:
            arg = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
        except ValueError:
            arg = 1.0
        return parent_based, min(1.0, max(0.0, arg))
    return parent_based, 1.0  # always_on, and any sampler the gateway does not know


class Tracer(trace.Tracer):
    """Makes `LeanSpan`s (or, sampled out, non-recording ones) and hands each ended span
    to `sink`."""

    def __init__(self, sink: Callable[[LeanSpan], None], *, parent_based: bool = True,
                 ratio: float = 1.0) -> None:
        self.sink = sink
        self.parent_based = parent_based
        # As the SDK's TraceIdRatioBased: sampled when the trace id's low 64 bits fall
        # under the bound, so every process deciding on the same trace agrees.
        self.bound = round(ratio * (_BITS_64 + 1))

    def start_span(self, name: str, context: Context | None = None,
                   kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
                   links: Sequence[Link] | None = None, start_time: int | None = None,
                   record_exception: bool = True, set_status_on_exception: bool = True
                   ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            trace_id = parent.trace_id
            sampled = (parent.trace_flags.sampled if self.parent_based
                       else trace_id & _BITS_64 < self.bound)
        else:
            parent = INVALID_SPAN_CONTEXT
            trace_id = random.getrandbits(128) or 1
            sampled = trace_id & _BITS_64 < self.bound
        ctx = SpanContext(trace_id, random.getrandbits(64) or 1, False,
                          _SAMPLED if sampled else _NOT_SAMPLED, parent.trace_state)
        if not sampled:
            return NonRecordingSpan(ctx)
        span = LeanSpan(self, name, ctx, parent if parent.is_valid else None, kind, attributes)
        if start_time is not None:
            span.start_time = start_time
        return span

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the gateway attaches its request's context itself")


def readable(span: LeanSpan, resource: Resource) -> ReadableSpan:
    """The SDK's record of an ended span, for SDK span processors and exporters."""
    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=resource,
        # As the SDK keeps them: sequences as tuples.
        attributes={k: tuple(v) if isinstance(v, list) else v
                     for k, v in span.attributes.items()},
        events=[Event(name, attrs, when) for name, when, attrs in span.events],
        kind=span.kind, status=span.status, start_time=span.start_time,
        end_time=span.end_time, instrumentation_scope=InstrumentationScope(SCOPE))
