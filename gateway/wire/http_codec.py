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


_MAX_MEMBERS = 1024  # gzip members one body may hold (aiohttp's cap)


class Decoder:
    """Content-Encoding gzip or deflate (zlib-wrapped, or raw as some servers send it).
    Output is bounded per call, so a small bomb never inflates past its caller's cap; a
    gzip body of several members (concatenated) is decoded whole, as aiohttp does."""

    __slots__ = ("_gzip", "_members", "_z")

    def __init__(self, coding: str) -> None:
        self._gzip = coding != "deflate"
        # 47: a gzip or a zlib header, whichever it is; deflate decides on its first byte.
        self._z: Any = zlib.decompressobj(47) if self._gzip else None
        self._members = 1

    def decode(self, data: bytes, limit: int) -> bytes:
        """At most `limit + 1` bytes: more than `limit` tells the caller it is over."""
        z = self._z
        if z is None:
            if not data:
                return b""
            # deflate: a zlib header says 8 in its low nibble, else it is raw
            z = self._z = zlib.decompressobj(15 if data[0] & 0x0F == 8 else -15)
        out = cast(bytes, z.decompress(data, limit + 1))
        while self._gzip and z.eof and z.unused_data and len(out) <= limit:
            self._members += 1  # another member follows the end of this one
            if self._members > _MAX_MEMBERS:
                raise zlib.error("too many gzip members")
            rest, z = z.unused_data, zlib.decompressobj(47)
            self._z = z
            out += z.decompress(rest, limit + 1 - len(out))
        return out

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


def encode_request(req: UpstreamRequest, path: str, host: str, extra: str = "") -> bytes:
    """`extra`: header lines of ours, pre-encoded (a proxy's authorization)."""
    lines = [f"{req.method} {path} HTTP/1.1\r\nhost: {host}\r\n{extra}"
             f"accept-encoding: gzip, deflate\r\ncontent-length: {len(req.body)}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in req.headers.items()
              if name.lower() not in _FRAMING]
    lines.append("\r\n")
    head = "".join(lines)
    # A CR or LF inside a name or value would let it inject headers or requests.
    breaks = len(lines) + 3 + extra.count("\n")
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise UpstreamFailure(FailureKind.PROTOCOL, "a header holds a line break")
    try:
        return head.encode("latin-1") + req.body
    except UnicodeEncodeError:
        raise UpstreamFailure(FailureKind.PROTOCOL,
                              "a header holds characters HTTP/1.1 cannot carry") from None

