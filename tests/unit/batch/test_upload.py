"""Multipart uploads read as they arrive: the size cap enforced while streaming (refused
before the rest is read, nothing left behind), JSONL checked on the way, bad bodies 400."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.batch.blobs import BlobWriter, LocalBlobs
from gateway.batch.upload import receive_upload
from gateway.errors import GatewayError
from gateway.http.asgi import Message

BOUNDARY = b"x-boundary-x"
TYPE = b"multipart/form-data; boundary=" + BOUNDARY


def form(content: bytes, purpose: bytes = b"batch") -> bytes:
    return (b"--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n%s\r\n"
            b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            b"Content-Type: application/jsonl\r\n\r\n%s\r\n--%s--\r\n"
            % (BOUNDARY, purpose, BOUNDARY, content, BOUNDARY))


class Body:
    """The request body in chunks, counting how many were read."""

    def __init__(self, data: bytes, size: int = 1000) -> None:
        self.chunks = [data[i:i + size] for i in range(0, len(data), size)]
        self.read = 0

    async def __call__(self) -> Message:
        chunk = self.chunks[self.read]
        self.read += 1
        return {"type": "http.request", "body": chunk,
                "more_body": self.read < len(self.chunks)}


async def upload(tmp_path: Path, body: Body, limit: int = 10_000,
                 content_type: bytes = TYPE) -> tuple[LocalBlobs, object]:
    blobs = LocalBlobs(str(tmp_path))

    async def writer() -> BlobWriter:
        return await blobs.writer("t/f1")

    try:
        return blobs, await receive_upload(body, content_type, limit, 100_000, writer)
    except GatewayError as err:
        return blobs, err


async def test_a_file_streams_to_the_blob(tmp_path: Path) -> None:
    data = b'{"custom_id": "a"}\n' * 90
    blobs, up = await upload(tmp_path, Body(form(data)))
    assert not isinstance(up, GatewayError)
    assert await blobs.read("t/f1") == data


async def test_over_the_cap_is_refused_while_streaming(tmp_path: Path) -> None:
    body = Body(form(b'{"a": 1}\n' * 10_000))  # ~90 KB against a 10 KB cap
    blobs, err = await upload(tmp_path, body)
    assert isinstance(err, GatewayError) and err.status == 413
    assert body.read < len(body.chunks) / 4  # refused long before the end
    with pytest.raises(FileNotFoundError):
        await blobs.read("t/f1")
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".upload-")]


@pytest.mark.parametrize(("data", "content_type", "param"), [
    (form(b'{"a": 1}\nnot json\n'), TYPE, "file"),
    (form(b'{"a": 1}\n', b"fine-tune"), TYPE, "purpose"),
    (form(b""), TYPE, "file"),
    (b"--x-boundary-x\r\ngarbage", TYPE, "file"),
    (form(b'{"a": 1}\n'), b"application/json", None),
])
async def test_bad_uploads_are_400(tmp_path: Path, data: bytes, content_type: bytes,
                                   param: str | None) -> None:
    _, err = await upload(tmp_path, Body(data), content_type=content_type)
    assert isinstance(err, GatewayError) and err.status == 400
    assert err.param == param
