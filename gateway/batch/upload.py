"""A multipart upload (`POST /v1/files`) read as it arrives: the `file` part streamed to
a blob writer, never held whole, and refused (413) as soon as it passes the size cap; its
lines checked as JSONL on the way (a batch input file must be), so a bad file is refused
at upload, not when a batch finds it. python-multipart (starlette's form parser) splits
the parts; it calls back synchronously, so what it finds is queued and written after each
chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.batch.blobs import BlobWriter
from gateway.errors import GatewayError, bad_request
from gateway.http.asgi import Receive, body_message

_SMALL_FIELD = 256  # `purpose` and other form fields: short words


@dataclass(slots=True)
class Upload:
    filename: str
    purpose: str
    size: int
    lines: int


class _JsonLines:
    """Checks lines as they stream by: each non-empty one a JSON object."""

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self.count = 0
        self._partial = b""

    def feed(self, data: bytes) -> None:
        *whole, self._partial = (self._partial + data).split(b"\n")
        for line in whole:
            self._line(line)

    def end(self) -> None:
        self._line(self._partial)
        self._partial = b""

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        self.count += 1
        if self.count > self.max_lines:
            raise bad_request(f"the file has more than {self.max_lines} lines", param="file")
        try:
            ok = isinstance(orjson.loads(line), dict)
        except orjson.JSONDecodeError:
            ok = False
        if not ok:
            raise bad_request(f"line {self.count} of the file is not a JSON object: a batch"
                              " input file is JSONL, one request object a line",
                              param="file", code="invalid_file_format")


@dataclass(slots=True)
class _Part:
    name: str = ""
    filename: str | None = None
    header: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)


class _Reader:
    """The parser's callbacks: what arrived for each part, in order, until drained."""

    def __init__(self, boundary: bytes) -> None:
        self.events: list[tuple[str, object]] = []
        self.ended = False
        self.part = _Part()
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._field,
            "on_header_value": self._value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers, "on_part_data": self._data,
            "on_part_end": self._part_end, "on_end": self._end})
        self._value_buf = b""

    def _begin(self) -> None:
        self.part = _Part()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self.part.header += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._value_buf += data[start:end]

    def _header_end(self) -> None:
        self.part.headers[self.part.header.lower()] = self._value_buf
        self.part.header, self._value_buf = b"", b""

    def _headers(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self.part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        self.events.append(("part", self.part))

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", data[start:end]))

    def _part_end(self) -> None:
        self.events.append(("end", None))

    def _end(self) -> None:
        self.ended = True


def boundary_of(content_type: bytes | None) -> bytes:
    kind, options = parse_options_header(content_type or b"")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise bad_request("the body must be multipart/form-data with a `file` and a"
                          " `purpose`", code="invalid_content_type")
    return boundary


async def receive_upload(receive: Receive, content_type: bytes | None, limit: int,
                         max_lines: int, open_writer: Callable[[], Awaitable[BlobWriter]]
                         ) -> Upload:
    """Read the upload; its `file` part is in the writer, committed, when this returns.
    Anything wrong (a GatewayError, the client gone): the writer is aborted."""
    reader = _Reader(boundary_of(content_type))
    writer: BlobWriter | None = None
    lines = _JsonLines(max_lines)
    fields: dict[str, bytes] = {}
    current: _Part | None = None
    filename: str | None = None
    size = 0
    try:
        while True:
            msg = await body_message(receive)
            try:
                reader.parser.write(msg.get("body", b""))
            except MultipartParseError:
                raise bad_request("malformed multipart body", code="invalid_body") from None
            for kind, value in reader.events:
                if kind == "part":
                    assert isinstance(value, _Part)
                    current = value
                    if value.name == "file":
                        if writer is not None:
                            raise bad_request("one `file` per upload", param="file")
                        filename = value.filename or "upload.jsonl"
                        writer = await open_writer()
                elif kind == "data" and current is not None:
                    assert isinstance(value, bytes)
                    if current.name == "file" and writer is not None:
                        size += len(value)
                        if size > limit:
                            raise GatewayError(413, f"the file is larger than the limit of"
                                               f" {limit} bytes", code="file_too_large",
                                               param="file")
                        lines.feed(value)
                        await writer.write(value)
                    else:
                        got = fields.get(current.name, b"") + value
                        if len(got) > _SMALL_FIELD:
                            raise bad_request(f"`{current.name[:64]}` is too long",
                                              param=current.name[:64])
                        fields[current.name] = got
                elif kind == "end":
                    current = None
            reader.events.clear()
            if not msg.get("more_body"):
                break
        if not reader.ended or writer is None or filename is None:
            raise bad_request("the upload needs a `file` part", param="file")
        lines.end()
        purpose = fields.get("purpose", b"").decode("utf-8", "replace")
        if purpose != "batch":
            raise bad_request("`purpose` must be `batch` (the only purpose served here)",
                              param="purpose")
        if lines.count == 0:
            raise bad_request("the file has no lines", param="file")
        await writer.commit()
        return Upload(filename[:256], purpose, size, lines.count)
    except BaseException:
        if writer is not None:
            await asyncio.shield(writer.abort())
        raise
