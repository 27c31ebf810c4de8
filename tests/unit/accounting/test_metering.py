"""Token estimates, streamed-text counting and cost arithmetic."""

from __future__ import annotations

import orjson

from gateway.accounting.metering import text_chars
from gateway.canonical import Deployment, Target, Usage
from policies.budgets import to_nanos
from policies.pricing import cost_nanos, max_output_tokens, prompt_tokens, worst_case_nanos


def dep(i: float, o: float, cached: float | None = None) -> Deployment:
    return Deployment("d", "m", "openai", Target("http://x/v1", "m"), i, o,
                      price_cached_input=cached)


def test_prompt_estimates() -> None:
    chat = {"messages": [{"role": "user", "content": "abcdefgh"},  # 2 + 4
                         {"role": "user", "content": [{"type": "text", "text": "abcde"},
                                                      {"type": "image_url"}]}]}  # 2 + 4
    assert prompt_tokens("chat", chat) == 12
    assert prompt_tokens("completions", {"prompt": [[1, 2, 3], [4]]}) == 4  # ids are exact
    assert prompt_tokens("embeddings", {"input": ["abcd", "abcde"]}) == 3
    assert max_output_tokens("chat", {"max_completion_tokens": 7, "n": 2}, 99) == 14
    assert max_output_tokens("completions", {}, 99) == 99
    assert max_output_tokens("embeddings", {"max_tokens": 5}, 99) == 0


def test_streamed_text_is_counted_from_serialized_chunks() -> None:
    chunk = orjson.dumps({"choices": [{"delta": {"content": 'say "hi"'}}]})
    assert text_chars(chunk) == len('say \\"hi\\"')  # escapes count as written
    tool = orjson.dumps({"choices": [{"delta": {"tool_calls": [
        {"function": {"arguments": '{"a":1}'}}]}}]})
    assert text_chars(tool) == len('{\\"a\\":1}')
    assert text_chars(b'{"choices":[{"delta":{"content": "abc"}}]}') == 3
    assert text_chars(b'{"choices":[{"delta":{"content":null}}]}') == 0
    assert text_chars(b'{"choices":[{"text":"abcd","index":0}]}') == 4


def test_cost_uses_cached_input_price_and_rounds_once() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=400)
    assert cost_nanos(dep(0.15, 0.60, 0.075), usage) == round(1000 * (600 * 0.15 + 400 * 0.075
                                                                      + 10 * 0.60))
    assert cost_nanos(dep(0.15, 0.60), usage) == round(1000 * (1000 * 0.15 + 10 * 0.60))
    assert worst_case_nanos([dep(1, 1), dep(0.5, 4)], 10, 10) == 45_000  # the dearer one
    assert to_nanos(0.00037) == 370_000
