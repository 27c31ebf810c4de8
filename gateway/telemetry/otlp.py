"""OTLP/HTTP (protobuf) export of lean spans: encoded on the event loop once per loop turn,
sent in batches from a thread of its own.

The protobuf encoding is written out here rather than built through the generated message
classes: building a message object per span, attribute and value was the larger half of
the SDK exporter's cost. What is encoded is the same `ExportTraceServiceRequest` (the tests
decode it with the generated classes); the parts that repeat (the resource, the scope,
attribute keys) are encoded once.

Ended spans queue up and are encoded by one callback per loop turn, after that turn's
responses went out, so the encoding never sits between a request and its answer. A batch
(`max_batch` spans, or whatever `interval_s` gathered) goes to the sender thread, which
only frames and posts it: the thread holds the interpreter lock for moments, never for an
encoding, so streams keep their pace. A collector that is down or slow loses spans (the
queue is bounded, a warning at most once a minute), never requests.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import logging
import queue
import ssl
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, StatusCode

from gateway.telemetry.spans import SCOPE, LeanSpan

log = logging.getLogger("turnout.tracing")

_MAX_BATCH = 512
_INTERVAL_S = 1.0
_MAX_QUEUED = 64  # batches waiting for the sender: past this they are dropped
_WARN_EVERY_S = 60.0


# -- protobuf wire format (https://protobuf.dev/programming-guides/encoding/) ------------

_SMALL = [bytes((i,)) for i in range(0x80)]  # one-byte varints, made once


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): `tag` is its encoded key."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


# Keys of the length-delimited fields used here, by field number (number << 3 | 2).
_F1, _F2, _F3, _F5, _F9, _F11, _F15 = (bytes((n << 3 | 2,)) for n in (1, 2, 3, 5, 9, 11, 15))


def _any_value(value: Any) -> bytes:
    """An AnyValue: string 1, bool 2, int 3, double 4, array 5."""
    if isinstance(value, str):
        return _field(_F1, value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, list | tuple):
        return _field(_F5, b"".join(_field(_F1, _any_value(v)) for v in value))
    return _field(_F1, str(value).encode())


# Encoded attributes of the (key, value) pairs that recur (a team, a model, a deployment),
# by the field they are encoded as (a span's, an event's, the resource's), so that most
# attributes are a dict lookup, their tag included. Only text is remembered: 0, 0.0 and
# False are equal dict keys but encode differently. A key with many values (ids) stops
# being remembered after _VALUES_PER_KEY of them.
_PAIRS: dict[bytes, dict[tuple[str, Any], bytes]] = {}
_VALUES: dict[str, int] = {}
_VALUES_PER_KEY = 32
_MAX_KEYS = 1024


def _key_value(tag: bytes, pair: tuple[str, Any]) -> bytes:
    """One KeyValue as the field whose key is `tag`, remembered if it may recur."""
    key, value = pair
    out = _field(tag, _field(_F1, key.encode()) + _field(_F2, _any_value(value)))
    if not (type(value) is str
            or (type(value) is tuple and all(type(v) is str for v in value))):
        return out
    seen = _VALUES.get(key, 0)
    if seen < _VALUES_PER_KEY and (seen or len(_VALUES) < _MAX_KEYS):
        _PAIRS.setdefault(tag, {})[pair] = out
        _VALUES[key] = seen + 1
    return out


def _attributes(tag: bytes, attrs: Mapping[str, Any] | None) -> bytes:
    """`repeated KeyValue` as the field whose key is `tag`."""
    if not attrs:
        return b""
    known = _PAIRS.get(tag) or {}
    out = []
    for pair in attrs.items():  # each (key, value) tuple is its own lookup key
        value = pair[1]
        if value is None:
            continue
        if type(value) is list:  # as the tuple it encodes alike, which can be remembered
            pair = (pair[0], tuple(value))
        try:
            encoded = known.get(pair)
        except TypeError:  # a tuple holding a list
            encoded = None
        out.append(encoded or _key_value(tag, pair))
    return b"".join(out)


_FIXED64 = struct.Struct("<Q")
# A span's kind field (the API's kinds start at 0, OTLP's at 1), by the enum's value:
# looked up by `_value_`, the attribute under the slower `.value` property.
_KINDS = {kind.value: b"\x30" + _varint(kind.value + 1) for kind in SpanKind}
_UNSET = StatusCode.UNSET


def encode_span(span: LeanSpan) -> bytes:
    """One `Span` message, as ScopeSpans.spans carries it (tag and length included)."""
    ctx = span.context
    parts = [b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"),
             b"\x12\x08" + ctx.span_id.to_bytes(8, "big")]
    if span.parent is not None:
        parts.append(b"\x22\x08" + span.parent.span_id.to_bytes(8, "big"))
    parts.append(_field(_F5, span.name.encode()))
    parts.append(_KINDS[span.kind._value_])
    parts.append(b"\x39" + _FIXED64.pack(span.start_time))
    parts.append(b"\x41" + _FIXED64.pack(span.end_time or span.start_time))
    parts.append(_attributes(_F9, span.attributes))
    for name, when, attrs in span.events:
        parts.append(_field(_F11, b"\x09" + _FIXED64.pack(when) + _field(_F2, name.encode())
                            + _attributes(_F3, attrs)))
    status = span.status
    if status.status_code is not _UNSET:  # the default: nothing to send
        message = _field(_F2, status.description.encode()) if status.description else b""
        parts.append(_field(_F15, message + b"\x18" + _varint(status.status_code.value)))
    return _field(_F2, b"".join(parts))


@dataclass(frozen=True, slots=True)
class Envelope:
    """What wraps every batch: the resource and the instrumentation scope, encoded once."""

    resource: bytes  # ResourceSpans.resource
    scope: bytes  # ScopeSpans.scope

    @classmethod
    def of(cls, resource: Resource) -> Envelope:
        return cls(_field(_F1, _attributes(_F1, dict(resource.attributes))),
                   _field(_F1, _field(_F1, SCOPE.encode())))

    def request(self, spans: list[bytes]) -> bytes:
        """An ExportTraceServiceRequest with one ResourceSpans holding `spans`."""
        scope_spans = _field(_F2, self.scope + b"".join(spans))
        return _field(_F1, self.resource + scope_spans)


# -- sending -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    url: str
    headers: dict[str, str]
    gzip: bool
    timeout_s: float
    ca_file: str | None


class Sender:
    """Posts encoded batches from its own thread, one keep-alive connection at a time."""

    def __init__(self, target: Target, envelope: Envelope) -> None:
        self.target = target
        self.envelope = envelope
        self._queue: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._conn: http.client.HTTPConnection | None = None
        self._warned = 0.0
        self.dropped = 0  # spans not delivered (a full queue, or the collector failing)
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="turnout-otlp", daemon=True)
        self._thread.start()

    def send(self, spans: list[bytes]) -> None:
        if self._queue.qsize() >= _MAX_QUEUED:
            self._lost(len(spans), "the export queue is full")
            return
        self._queue.put(spans)

    def close(self, timeout_s: float) -> bool:
        """Send what is queued, then stop; False when that took longer than `timeout_s`."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (spans := self._queue.get()) is not None:
            try:
                self._post(self.envelope.request(spans))
                self.sent += len(spans)
            except Exception as err:  # the collector is away or refusing: drop, go on
                self._reset()
                self._lost(len(spans), f"{type(err).__name__}: {err}")

    def _post(self, body: bytes) -> None:
        t = self.target
        headers = {"content-type": "application/x-protobuf", **t.headers}
        if t.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["content-encoding"] = "gzip"
        for attempt in (1, 2):  # a kept-alive connection the collector closed: once more
            conn = self._connection()
            try:
                parts = urlsplit(t.url)
                conn.request("POST", parts.path or "/v1/traces", body, headers)
                resp = conn.getresponse()
                resp.read()
            except (ConnectionError, http.client.HTTPException):
                self._reset()
                if attempt == 2:
                    raise
                continue
            if resp.status >= 300:
                raise RuntimeError(f"the collector answered {resp.status}")
            return

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            parts = urlsplit(self.target.url)
            host, port = parts.hostname or "localhost", parts.port
            if parts.scheme == "https":
                context = ssl.create_default_context(cafile=self.target.ca_file)
                self._conn = http.client.HTTPSConnection(
                    host, port, timeout=self.target.timeout_s, context=context)
            else:
                self._conn = http.client.HTTPConnection(host, port,
                                                        timeout=self.target.timeout_s)
        return self._conn

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _lost(self, n: int, why: str) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            log.warning("tracing: %d span(s) not exported (%s; %d lost so far)", n, why,
                        self.dropped)


class OtlpExport:
    """The sink of lean spans: encoded per loop turn, batched, handed to the sender."""

    def __init__(self, sender: Sender, max_batch: int = _MAX_BATCH,
                 interval_s: float = _INTERVAL_S) -> None:
        self.sender = sender
        self.max_batch = max_batch
        self.interval_s = interval_s
        self._ended: list[LeanSpan] = []  # waiting for this loop turn's encoding
        self._batch: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, span: LeanSpan) -> None:
        self._ended.append(span)
        if len(self._ended) == 1:
            try:
                asyncio.get_running_loop().call_soon(self._encode)
            except RuntimeError:  # no loop running (shutdown, a script): now
                self._encode()

    def _encode(self) -> None:
        ended, self._ended = self._ended, []
        batch = self._batch
        for span in ended:
            batch.append(encode_span(span))
            if len(batch) >= self.max_batch:
                self.flush()
                batch = self._batch
        if batch and self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.interval_s,
                                                                    self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ended:
            self._encode()
        if self._batch:
            batch, self._batch = self._batch, []
            self.sender.send(batch)

    def close(self, timeout_s: float) -> bool:
        self.flush()
        return self.sender.close(timeout_s)
