"""The bytes of HTTP/1.1 to and from upstreams that need no connection: a request's head,
a body's content-coding, a deadline's expiry."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, cast

from gateway.canonical import FailureKind, UpstreamFailure, UpstreamRequest


def failure(message: str) -> UpstreamFailure:
    """The upstream broke the protocol (or a limit): the request fails as such."""
    return UpstreamFailure(FailureKind.PROTOCOL, message)


def expire(waiter: asyncio.Future[Any]) -> None:
    """A deadline passed: the waiter raises TimeoutError (as `asyncio.timeout` would)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Decoder:
    """Content-Encoding gzip or deflate (zlib-wrapped, or raw as some servers send it)."""

    __slots__ = ("_z",)

    def __init__(self, coding: str) -> None:
        # 47: a gzip or a zlib header, whichever it is; deflate decides on its first byte.
        self._z: Any = zlib.decompressobj(47) if coding != "deflate" else None

    def decode(self, data: bytes) -> bytes:
        if self._z is None and data:  # deflate: a zlib header says 8 in its low nibble
            self._z = zlib.decompressobj(15 if data[0] & 0x0F == 8 else -15)
        return cast(bytes, self._z.decompress(data)) if self._z is not None else b""

    def finish(self, fed: bool) -> bytes:
        if self._z is None or not fed:  # an empty body (a 204, a HEAD) is not truncated
            return b""
        out = cast(bytes, self._z.flush())
        if not self._z.eof:
            raise zlib.error("truncated")
        return out


def decoder_for(coding: str | None) -> Decoder | None:
    """None for no coding; raises UpstreamFailure for one we did not offer."""
    if not coding:
        return None
    coding = coding.strip().lower()
    if coding == "identity":
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return Decoder(coding)
    raise failure(f"the upstream sent an unsupported content-encoding ({coding[:40]})")


# Framing is ours to write: a configured header of these names is not sent twice.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "accept-encoding",
                      "connection"})


def encode_request(req: UpstreamRequest, path: str, host: str) -> bytes:
    lines = [f"{req.method} {path} HTTP/1.1\r\nhost: {host}\r\n"
             f"accept-encoding: gzip, deflate\r\ncontent-length: {len(req.body)}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in req.headers.items()
              if name.lower() not in _FRAMING]
    lines.append("\r\n")
    head = "".join(lines)
    # A CR or LF inside a name or value would let it inject headers or requests.
    breaks = len(lines) + 3
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise UpstreamFailure(FailureKind.PROTOCOL, "a header holds a line break")
    try:
        return head.encode("latin-1") + req.body
    except UnicodeEncodeError:
        raise UpstreamFailure(FailureKind.PROTOCOL,
                              "a header holds characters HTTP/1.1 cannot carry") from None

