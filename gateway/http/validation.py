"""Checks of request bodies shared by the client formats: hand-written rather than a
schema library, because the hot path parses once with orjson and checks only what the
gateway relies on or what an upstream would reject with a worse message.

Each `Rule` is a check, the words an error uses for what was expected, and the same
constraint as JSON Schema: `gateway/http/openapi.py` builds the published API document
from the very rules that validate requests, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from gateway.errors import bad_request

Check = Callable[[Any], bool]
JsonSchema = dict[str, Any]


class Rule(NamedTuple):
    check: Check
    expected: str  # "must be {expected}"
    schema: JsonSchema


Rules = dict[str, Rule]  # an optional field's name → its rule (null always passes)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def between(lo: float, hi: float, *, integer: bool = False) -> Rule:
    kind = "integer" if integer else "number"
    check: Check = (lambda v: is_int(v) and lo <= v <= hi) if integer else (
        lambda v: is_num(v) and lo <= v <= hi)
    return Rule(check, f"{'an integer' if integer else 'a number'} between {lo:g} and {hi:g}",
                {"type": kind, "minimum": lo, "maximum": hi})


def at_least(lo: int) -> Rule:
    return Rule(lambda v: is_int(v) and v >= lo, f"an integer >= {lo}",
                {"type": "integer", "minimum": lo})


INTEGER = Rule(is_int, "an integer", {"type": "integer"})
BOOLEAN = Rule(lambda v: isinstance(v, bool), "a boolean", {"type": "boolean"})
STRING = Rule(lambda v: isinstance(v, str), "a string", {"type": "string"})
OBJECT = Rule(lambda v: isinstance(v, dict), "an object", {"type": "object"})
LIST = Rule(lambda v: isinstance(v, list), "a list", {"type": "array"})


def one_of(*values: str) -> Rule:
    return Rule(lambda v: v in values, " or ".join(f"'{v}'" for v in values),
                {"type": "string", "enum": list(values)})


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


def check_fields(body: dict[str, Any], rules: Rules) -> None:
    for name, rule in rules.items():
        value = body.get(name)
        if value is not None and not rule.check(value):
            raise bad_request(f"`{name}` must be {rule.expected}", param=name)


def properties(rules: Rules) -> dict[str, JsonSchema]:
    """The rules as JSON Schema properties (each may also be null: "the default")."""
    return {name: {"anyOf": [rule.schema, {"type": "null"}]} for name, rule in rules.items()}
