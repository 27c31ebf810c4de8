"""Ids made by this process: unique across processes and restarts without a system call
per id (a random prefix per process, forked workers included, then a counter)."""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _new_prefix() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count()


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)


def new_id() -> str:
    return f"{_prefix}{next(_counter):08x}"
