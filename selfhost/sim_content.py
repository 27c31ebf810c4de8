"""What the simulator says: request validation, deterministic text and OpenAI's wire shapes.

Text is a function of the prompt alone. Each prompt hashes to a walk through a fixed
64-word vocabulary; token i of the walk is `" " + word` (one word = one token = one stream
chunk). With vLLM's `continue_final_message`, the walk is seeded by the messages *before*
the final assistant message and starts after as many words as that message already has, so
    generate(messages) == prefix + generate(messages + [assistant: prefix], continue)
for any prefix the simulator produced itself: exactly what mid-stream failover needs.

Prompt tokens are approximated as whitespace-separated words (text parts of every message)
plus 4 per chat message, or the length of a token-id prompt.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from dataclasses import dataclass
from typing import Any

import orjson

VOCAB = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu", "amber", "basil", "cedar", "dune", "ember", "fjord",
    "garnet", "harbor", "island", "jasper", "kettle", "lantern", "meadow", "nectar",
    "orchid", "pebble", "quartz", "river", "saffron", "timber", "umber", "valley",
    "willow", "yarrow", "zephyr", "acorn", "breeze", "canyon", "drift", "falcon",
    "glacier", "horizon", "ivory", "jungle", "kelp", "lotus", "marble", "nimbus",
)  # fmt: skip
_TOKENS = tuple(" " + w for w in VOCAB)
_MASK = len(VOCAB) - 1  # a power of two: any odd stride visits every word
assert len(VOCAB) & _MASK == 0

TOKENS_PER_MESSAGE = 4  # chat-template overhead per message, roughly what Llama-style use
MAX_N = 128


class BadRequest(Exception):
    """A request the simulator refuses, rendered as an OpenAI error body."""

    def __init__(
        self, message: str, param: str | None = None, *, status: int = 400, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def error_body(
    message: str, err_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def tokens(seed: int, start: int, count: int) -> list[str]:
    """Tokens start..start+count-1 of the walk seeded by `seed`."""
    offset, stride = seed & _MASK, ((seed >> 8) & _MASK) | 1
    return [_TOKENS[(offset + i * stride) & _MASK] for i in range(start, start + count)]


def _seed(digest: bytes, choice: int) -> int:
    # Choice 0 keeps the plain seed so n=1 and continuation agree; others get a distinct walk.
    return int.from_bytes(digest[:8], "little") ^ (choice * 0x9E3779B97F4A7C15)


# ---------------------------------------------------------------------------------------------
# Plans: everything a generation needs, decided before any waiting starts


# Per prompt, its cacheable prefixes shortest first: (hash of the prefix, prompt tokens up to
# its end). A chat has one prompt whose prefixes end at message boundaries.
Prefixes = list[list[tuple[bytes, int]]]


@dataclass(slots=True)
class GenPlan:
    chat: bool
    model: str
    seeds: tuple[int, ...]  # one per choice
    skip: int  # words already present in a continued assistant message
    max_new: int  # tokens per choice
    finish_reason: str
    prompt_tokens: int
    prefixes: Prefixes
    stream: bool
    include_usage: bool
    continuous_usage: bool

    def texts(self) -> list[str]:
        return ["".join(tokens(s, self.skip, self.max_new)) for s in self.seeds]


@dataclass(slots=True)
class EmbedPlan:
    model: str
    digests: list[bytes]
    dimensions: int
    base64: bool
    prompt_tokens: int


def plan_chat(body: dict[str, Any], model: str, default_max: int) -> GenPlan:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    parts = [_message(i, m) for i, m in enumerate(messages)]
    if body.get("continue_final_message") is True and body.get("add_generation_prompt") is True:
        raise BadRequest(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            "continue_final_message",
        )
    continuing = body.get("continue_final_message") is True and parts[-1][0] == b"assistant"
    digests, keys, total = [hashlib.blake2b(digest_size=16)], [], 0
    for role, text, words in parts:
        h = digests[-1].copy()
        h.update(b"%s\0%s\1" % (role, text))
        digests.append(h)
        total += words + TOKENS_PER_MESSAGE
        keys.append((h.digest(), total))
    context = len(parts) - 1 if continuing else len(parts)
    n = _int_param(body, "n", 1, MAX_N) or 1
    max_new, finish = _length(body, default_max, "max_completion_tokens", "max_tokens")
    seed_digest = digests[context].digest()
    return GenPlan(
        chat=True,
        model=_model(body, model),
        seeds=tuple(_seed(seed_digest, j) for j in range(n)),
        skip=parts[-1][2] if continuing else 0,
        max_new=max_new,
        finish_reason=finish,
        prompt_tokens=total,
        prefixes=[keys],
        **_stream_flags(body),
    )


def plan_completion(body: dict[str, Any], model: str, default_max: int) -> GenPlan:
    prompts = _inputs(body, "prompt")
    n = _int_param(body, "n", 1, MAX_N) or 1
    max_new, finish = _length(body, default_max, "max_tokens")
    return GenPlan(
        chat=False,
        model=_model(body, model),
        seeds=tuple(_seed(digest, j) for digest, _ in prompts for j in range(n)),
        skip=0,
        max_new=max_new,
        finish_reason=finish,
        prompt_tokens=sum(count for _, count in prompts),
        prefixes=[[p] for p in prompts],
        **_stream_flags(body),
    )


def plan_embeddings(body: dict[str, Any], model: str, default_dims: int) -> EmbedPlan:
    inputs = _inputs(body, "input")
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise BadRequest("encoding_format must be 'float' or 'base64'", "encoding_format")
    return EmbedPlan(
        model=_model(body, model),
        digests=[digest for digest, _ in inputs],
        dimensions=_int_param(body, "dimensions", 1, 65536) or default_dims,
        base64=fmt == "base64",
        prompt_tokens=sum(count for _, count in inputs),
    )


def _message(index: int, message: Any) -> tuple[bytes, bytes, int]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest(
            f"messages[{index}] must be an object with a string 'role'", f"messages[{index}]"
        )
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text parts carry words
        content = " ".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    text = content if isinstance(content, str) else ""
    return message["role"].encode(), text.encode(), len(text.split())


def _inputs(body: dict[str, Any], name: str) -> list[tuple[bytes, int]]:
    """str | list[str] | list[int] | list[list[int]] → (hash, token count) per item."""
    value = body.get(name)
    if isinstance(value, str) or (isinstance(value, list) and value and _is_ids(value)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest(f"'{name}' must be a string, an array of strings or token ids", name)
    items = []
    for item in value:
        if isinstance(item, str):
            items.append((_digest(item.encode()), len(item.split())))
        elif isinstance(item, list) and _is_ids(item):
            items.append((_digest(repr(item).encode()), len(item)))
        else:
            raise BadRequest(f"'{name}' items must be strings or arrays of token ids", name)
    return items


def _is_ids(value: list[Any]) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _model(body: dict[str, Any], default: str) -> str:
    model = body.get("model", default)
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    return model


def _int_param(body: dict[str, Any], name: str, low: int, high: int = 1 << 31) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be an integer in [{low}, {high}]", name)
    return value


def _length(body: dict[str, Any], default_max: int, *names: str) -> tuple[int, str]:
    """Tokens to generate and the finish reason: an explicit limit is always used up."""
    limits = [v for v in (_int_param(body, name, 1) for name in names) if v is not None]
    floor = _int_param(body, "min_tokens", 0) or 0
    if limits:
        if floor > limits[0]:
            raise BadRequest("min_tokens must not exceed the max tokens", "min_tokens")
        return limits[0], "length"
    return max(default_max, floor), "stop"


def _stream_flags(body: dict[str, Any]) -> dict[str, bool]:
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or stream is not True):
        raise BadRequest("Stream options can only be defined when `stream=True`.", "stream_options")
    include = bool(options and options.get("include_usage") is True)
    return {
        "stream": stream is True,
        "include_usage": include,
        "continuous_usage": include and bool(options and options.get("continuous_usage_stats")),
    }


# ---------------------------------------------------------------------------------------------
# Wire shapes


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def whole_body(plan: GenPlan, rid: str, created: int, cached: int) -> dict[str, Any]:
    fr = plan.finish_reason
    if plan.chat:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": fr,
            }
            for i, text in enumerate(plan.texts())
        ]
    else:
        choices = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": fr}
            for i, text in enumerate(plan.texts())
        ]
    return {
        "id": rid,
        "object": "chat.completion" if plan.chat else "text_completion",
        "created": created,
        "model": plan.model,
        "choices": choices,
        "usage": usage(plan.prompt_tokens, plan.max_new * len(plan.seeds), cached),
    }


SSE_DONE = b"data: [DONE]\n\n"


def chunk(
    plan: GenPlan,
    rid: str,
    created: int,
    choices: list[dict[str, Any]],
    usage_now: dict[str, Any] | None,
) -> bytes:
    data: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if plan.chat else "text_completion",
        "created": created,
        "model": plan.model,
        "choices": choices,
    }
    if plan.include_usage:  # OpenAI: "usage": null on every chunk but the usage chunk
        data["usage"] = usage_now
    return b"data: " + orjson.dumps(data) + b"\n\n"


def role_choice(index: int) -> dict[str, Any]:
    return {
        "index": index,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }


def token_choice(plan: GenPlan, index: int, text: str, finish: str | None) -> dict[str, Any]:
    if plan.chat:
        return {
            "index": index,
            "delta": {"content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def embeddings_body(plan: EmbedPlan) -> dict[str, Any]:
    data = []
    for i, digest in enumerate(plan.digests):
        vec = _vector(digest, plan.dimensions)
        value: Any = vec
        if plan.base64:  # what the OpenAI SDK asks for by default: little-endian float32
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": plan.model,
        "usage": {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens},
    }


def _vector(digest: bytes, dims: int) -> list[float]:
    """A unit vector that depends only on the input (like real embedding models, normalized)."""
    rng = random.Random(digest)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = sum(x * x for x in vec) ** 0.5 or 1.0
    return [x / norm for x in vec]
