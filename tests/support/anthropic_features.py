"""The Anthropic mock's prompt caching, extended thinking and token counting, as
platform.claude.com/docs documents them (build-with-claude/prompt-caching,
extended-thinking, token-counting), independently of our adapters:

- Prompt caching: a `cache_control: {"type": "ephemeral", "ttl"?: "5m" | "1h"}` on a tool,
  a system block or a message's content block ends a cacheable prefix, in the order
  tools → system → messages (a top-level `cache_control` puts it on the last block:
  automatic caching); at most 4. A prefix of at least `min_tokens` is written on first
  use (`cache_creation_input_tokens`, split by TTL in `usage.cache_creation`) and read
  after (`cache_read_input_tokens`); `input_tokens` is only what comes after the last
  cache hit or write (reads and writes are reported on top of it).
- Extended thinking: `thinking: {"type": "enabled", "budget_tokens": N}` needs N >= 1024
  and N < max_tokens, no temperature other than 1, no forced tool; the answer starts with
  a thinking block signed by the mock (or a redacted one). A thinking block sent back
  must carry the signature the mock gave it; with thinking on, an assistant turn that
  used a tool must start with its thinking block.
- Token counting: the same count the mock bills, for /v1/messages/count_tokens.

The mock's tokenizer: ceil(UTF-8 bytes / 4) per text (tool definitions and inputs as
JSON), plus 3 per message.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_BREAKPOINTS = 4
MIN_BUDGET = 1024


class Invalid(Exception):
    """A request the real API answers with a 400 invalid_request_error (its message)."""


def tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / 4)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "thinking":
        return str(block.get("thinking") or "")
    if kind == "tool_use":
        return orjson.dumps(block.get("input")).decode() + str(block.get("name") or "")
    if kind == "tool_result":
        content = block.get("content")
        return content if isinstance(content, str) else "".join(map(_block_text, content or ()))
    return orjson.dumps({k: v for k, v in block.items() if k != "cache_control"}).decode()


@dataclass
class _Segment:
    key: bytes  # what the prefix up to here is made of
    tokens: int
    cache_control: dict[str, Any] | None


def segments(body: dict[str, Any]) -> list[_Segment]:
    """The prompt as cacheable blocks, in caching order: tools, system, messages."""
    out: list[_Segment] = []

    def add(block: Any, extra: int = 0) -> None:
        plain = {k: v for k, v in block.items() if k != "cache_control"} if isinstance(
            block, dict) else block
        control = block.get("cache_control") if isinstance(block, dict) else None
        out.append(_Segment(orjson.dumps(plain, option=orjson.OPT_SORT_KEYS),
                            tokens(_block_text(block)) + extra, control))

    for tool in body.get("tools") or ():
        add({"type": "tool", **tool} if isinstance(tool, dict) else tool)
        out[-1].tokens = tokens(orjson.dumps(
            {k: v for k, v in tool.items() if k != "cache_control"}).decode())
    system = body.get("system")
    for block in [system] if isinstance(system, str) else system or ():
        add(block)
    for msg in body.get("messages") or ():
        content = msg.get("content")
        blocks = [content] if isinstance(content, str) else content or [""]
        for i, block in enumerate(blocks):
            add(block, 3 if i == 0 else 0)
            out[-1].key = msg.get("role", "").encode() + out[-1].key
    if isinstance(body.get("cache_control"), dict) and out:  # automatic caching
        out[-1].cache_control = body["cache_control"]
    return out


def count(body: dict[str, Any]) -> int:
    return sum(s.tokens for s in segments(body))


@dataclass
class PromptCache:
    """Prefixes written so far (digest → tokens), as one organization's cache."""

    min_tokens: int = 1024
    entries: dict[str, int] = field(default_factory=dict)

    def usage(self, body: dict[str, Any]) -> dict[str, Any]:
        segs = segments(body)
        points: list[tuple[int, str, str]] = []  # (prefix tokens, digest, ttl)
        digest, total = hashlib.sha256(), 0
        for seg in segs:
            digest.update(seg.key)
            total += seg.tokens
            control = seg.cache_control
            if control is None:
                continue
            if control.get("type") != "ephemeral" or control.get("ttl", "5m") not in ("5m", "1h"):
                raise Invalid("cache_control: Input tag does not match the expected tags"
                              " ('ephemeral' with ttl '5m' or '1h')")
            points.append((total, digest.copy().hexdigest(), control.get("ttl", "5m")))
        if len(points) > MAX_BREAKPOINTS:
            raise Invalid(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be"
                          f" provided. Found {len(points)}.")
        eligible = [p for p in points if p[0] >= self.min_tokens]
        read = max((t for t, d, _ in eligible if d in self.entries), default=0)
        written = {"5m": 0, "1h": 0}
        if eligible and eligible[-1][0] > read:
            last_tokens, _, ttl = eligible[-1]
            written[ttl] = last_tokens - read
        for t, d, _ in eligible:
            self.entries.setdefault(d, t)
        creation = written["5m"] + written["1h"]
        return {"input_tokens": total - read - creation,
                "cache_creation_input_tokens": creation, "cache_read_input_tokens": read,
                "cache_creation": {"ephemeral_5m_input_tokens": written["5m"],
                                   "ephemeral_1h_input_tokens": written["1h"]}}


def signature(thinking: str) -> str:
    """The mock's signature of a thinking text (the real one is opaque too)."""
    return base64.b64encode(hashlib.sha256(b"mock:" + thinking.encode()).digest()).decode()


def check_thinking(body: dict[str, Any]) -> bool:
    """Validate `thinking` and the thinking blocks sent back; True when it is enabled."""
    config = body.get("thinking")
    enabled = isinstance(config, dict) and config.get("type") == "enabled"
    if enabled:
        assert isinstance(config, dict)
        budget = config.get("budget_tokens")
        if not isinstance(budget, int) or budget < MIN_BUDGET:
            raise Invalid(f"thinking.enabled.budget_tokens: Input should be greater than or"
                          f" equal to {MIN_BUDGET}")
        if budget >= body["max_tokens"]:
            raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
        if body.get("temperature") not in (None, 1):
            raise Invalid("`temperature` may only be set to 1 when thinking is enabled.")
        if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")
    messages = body.get("messages") or []
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    for i, msg in enumerate(messages):
        blocks = msg.get("content") if isinstance(msg.get("content"), list) else []
        for k, block in enumerate(blocks):
            if block.get("type") == "thinking" and block.get("signature") != signature(
                    str(block.get("thinking") or "")):
                raise Invalid(f"messages.{i}.content.{k}: Invalid `signature` in `thinking`"
                              " block")
        # the assistant turn whose tool call the conversation is answering
        if (enabled and i == last and blocks
                and any(b.get("type") == "tool_use" for b in blocks)
                and blocks[0].get("type") not in ("thinking", "redacted_thinking")):
            raise Invalid(f"messages.{i}.content.0.type: Expected `thinking` or"
                          f" `redacted_thinking`, but found `{blocks[0].get('type')}`. When"
                          " `thinking` is enabled, a final `assistant` message must start with"
                          " a thinking block.")
    return enabled
