"""Checks of request bodies shared by the client formats: hand-written rather than a
schema library, because the hot path parses once with orjson and checks only what the
gateway relies on or what an upstream would reject with a worse message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import bad_request

Check = Callable[[Any], bool]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def between(lo: float, hi: float) -> Check:
    return lambda v: is_num(v) and lo <= v <= hi


def at_least(lo: int) -> Check:
    return lambda v: is_int(v) and v >= lo


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise bad_request(f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def check_fields(body: dict[str, Any], rules: dict[str, tuple[Check, str]]) -> None:
    for name, (check, expected) in rules.items():
        value = body.get(name)
        if value is not None and not check(value):
            raise bad_request(f"`{name}` must be {expected}", param=name)
