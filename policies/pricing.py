"""Token estimates and cost.

Token counts come from the upstream's `usage` whenever it reports one. When it does not
(or the stream was cut short), and for reservations made before dispatch, tokens are
estimated as ceil(characters / 4) — OpenAI's published rule of thumb for English — plus
4 per chat message for the chat template. tiktoken cannot be used offline, and no single
tokenizer is right for every deployment anyway; events counted this way are marked
`estimated`.

Cost is integer nano-dollars (see `policies.budgets`): a price is USD per 1M tokens, so
one token at price p costs p * 1000 nano-dollars; rounding is applied once per request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from gateway.canonical import Deployment, Usage

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def text_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: only text carries tokens we can count
        return sum(len(p["text"]) for p in content
                   if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def _inputs_tokens(value: Any) -> int:
    """str | list[str] | list[int] | list[list[int]]: token ids count exactly."""
    if isinstance(value, str):
        return text_tokens(len(value))
    if isinstance(value, list) and value:
        if isinstance(value[0], int):
            return len(value)
        return sum(_inputs_tokens(v) for v in value)
    return 0


def prompt_tokens(operation: str, body: dict[str, Any]) -> int:
    if operation == "chat":
        return sum(text_tokens(_content_chars(m.get("content"))) + TOKENS_PER_MESSAGE
                   for m in body["messages"])
    return _inputs_tokens(body.get("prompt" if operation == "completions" else "input"))


def max_output_tokens(operation: str, body: dict[str, Any], default: int) -> int:
    """The most a request can generate: what it asked for, else the configured default."""
    if operation == "embeddings":
        return 0
    asked = body.get("max_completion_tokens") or body.get("max_tokens") or default
    return int(asked) * int(body.get("n") or 1)


def _write_price(dep: Deployment) -> float:
    return dep.price_input if dep.price_cache_write is None else dep.price_cache_write


def cost_nanos(dep: Deployment, usage: Usage) -> int:
    """The canonical usage's cost: cache reads and writes are parts of `prompt_tokens`
    (canonical.Usage), each priced at its own rate, the rest of the prompt at `input`;
    reasoning tokens are part of `completion_tokens`, priced as output. (Once per request:
    comparisons rather than min(), a third of the time.)"""
    prompt = usage.prompt_tokens
    cached = usage.cached_tokens
    if cached > prompt:
        cached = prompt
    written = usage.cache_write_tokens
    if written > prompt - cached:
        written = prompt - cached
    price = dep.price_input
    read_price = price if dep.price_cached_input is None else dep.price_cached_input
    return round(1000 * ((prompt - cached - written) * price + cached * read_price
                         + written * _write_price(dep)
                         + usage.completion_tokens * dep.price_output))


def worst_case_nanos(deps: Iterable[Deployment], prompt: int, output: int) -> int:
    """What to reserve: the dearest deployment the plan might end up on, no cache discount,
    and the whole prompt written to the cache where that costs more than input."""
    # cost_nanos of Usage(prompt, output) and of the same with the prompt all written,
    # the dearer of the two, without building either (per request): the same floats,
    # and rounding the largest is the largest rounded.
    worst = max((prompt * max(d.price_input, _write_price(d)) + output * d.price_output
                 for d in deps), default=0.0)
    return round(1000 * worst)
