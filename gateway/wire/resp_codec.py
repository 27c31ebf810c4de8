"""RESP2 encoding of commands: the hot path of every Redis call, so exact type checks and
the common cases first; what never changes (small integers, a script's keys) is encoded
once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from gateway.wire.base import Arg

# Small integers (key counts, flags, limits) come up in every call: encoded once.
_SMALL_INTS = tuple(b"$%d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(1024))


def bulks(args: Sequence[Any]) -> bytes:
    """Each argument as a RESP bulk string, concatenated. The hot path: exact type checks,
    the common types first."""
    out = []
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            if 0 <= arg < 1024:
                out.append(_SMALL_INTS[arg])
                continue
            data = b"%d" % arg
        else:
            data = _other(arg)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _other(arg: object) -> bytes:
    """The rare argument types, off the fast path: floats, int subclasses, buffers."""
    if isinstance(arg, float):
        return repr(arg).encode()  # repr round-trips exactly, as Redis parses it
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode()
    raise TypeError(f"cannot send a {type(arg).__name__} to redis")


def encode(args: Sequence[Arg]) -> bytes:
    """One command: a RESP array of bulk strings."""
    return b"*%d\r\n" % len(args) + bulks(args)


class Encoded(NamedTuple):
    """Arguments encoded ahead of time, to be reused by many commands (a script's keys)."""

    n: int  # how many arguments
    data: bytes
