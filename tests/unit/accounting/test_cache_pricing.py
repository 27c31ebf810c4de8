"""Usage normalised once into the canonical convention (cache reads and writes inside
prompt_tokens, reasoning inside completion_tokens), and the cost arithmetic of both
providers' conventions, pinned with their documented examples."""

from __future__ import annotations

import orjson

from adapters.anthropic import AnthropicUsage
from adapters.openai_responses import usage_of
from gateway.canonical import Deployment, Target, Usage, usage_from_json, usage_json
from gateway.http.anthropic_answers import message_body
from policies.pricing import cost_nanos, worst_case_nanos


def dep(i: float, o: float, *, read: float | None = None,
        write: float | None = None) -> Deployment:
    return Deployment("d", "m", "anthropic", Target("http://x/v1", "m"), i, o,
                      price_cached_input=read, price_cache_write=write)


# Claude Sonnet's published prices, USD per 1M tokens: input 3, output 15, 5-minute cache
# writes 3.75 (1.25x input), cache reads 0.30 (0.1x input).
SONNET = dep(3, 15, read=0.30, write=3.75)
# gpt-4o: input 2.50, cached input 1.25, output 10.
GPT4O = dep(2.5, 10, read=1.25)


def test_anthropic_reports_cache_reads_and_writes_on_top_of_input_tokens() -> None:
    """A usage block as Anthropic documents it (a Sonnet call that hit a ~30k-token cached
    prefix and wrote 287 more): input_tokens is only the uncached rest."""
    reported = {"input_tokens": 1, "cache_creation_input_tokens": 287,
                "cache_read_input_tokens": 30433, "output_tokens": 67}
    usage = AnthropicUsage()
    usage.update(reported)
    canonical = usage.canonical()
    assert canonical == Usage(prompt_tokens=30721, completion_tokens=67, cached_tokens=30433,
                              cache_write_tokens=287)
    # 1 x 3 + 287 x 3.75 + 30433 x 0.30 + 67 x 15 = 11,214.15 USD per 1M = $0.01121415
    assert cost_nanos(SONNET, canonical) == 11_214_150
    # What billing it all as plain input (the old arithmetic) would have charged:
    assert cost_nanos(dep(3, 15), canonical) == 93_168_000
    # Back on the Anthropic surface the same four numbers come out.
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                         "finish_reason": "stop"}], "usage": usage_json(canonical)}
    assert orjson.loads(message_body(orjson.dumps(body)))["usage"] == reported


def test_openai_reports_cached_tokens_inside_prompt_tokens() -> None:
    """OpenAI's prompt-caching guide's usage object: 1920 of 2006 prompt tokens cached."""
    reported = {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920},
                "completion_tokens_details": {"reasoning_tokens": 0}}
    usage = usage_from_json(reported)
    assert usage == Usage(2006, 300, cached_tokens=1920)
    # 86 x 2.50 + 1920 x 1.25 + 300 x 10 = 5,615 USD per 1M = $0.005615
    assert cost_nanos(GPT4O, usage) == 5_615_000


def test_the_responses_api_reports_as_openai_chat_does() -> None:
    usage = usage_of({"input_tokens": 2006, "output_tokens": 300, "total_tokens": 2306,
                      "input_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 128}})
    assert usage == Usage(2006, 300, cached_tokens=1920, reasoning_tokens=128)
    assert cost_nanos(GPT4O, usage) == 5_615_000  # reasoning tokens are output tokens


def test_unset_cache_prices_are_the_input_price() -> None:
    usage = Usage(1000, 0, cached_tokens=600, cache_write_tokens=300)
    assert cost_nanos(dep(2, 0), usage) == 2_000_000
    assert cost_nanos(dep(2, 0, read=0.2), usage) == 400 * 2000 + 600 * 200
    assert cost_nanos(dep(2, 0, write=2.5), usage) == 700 * 2000 + 300 * 2500


def test_cache_counts_past_the_prompt_are_clamped() -> None:
    # A malformed report cannot make cost negative or count a token twice.
    assert cost_nanos(SONNET, Usage(10, 0, cached_tokens=8, cache_write_tokens=8)) == (
        8 * 300 + 2 * 3750)


def test_the_reservation_covers_a_prompt_written_whole_to_the_cache() -> None:
    # Writes cost more than input here: the worst case prices the prompt as a write.
    assert worst_case_nanos([SONNET], 1000, 100) == 1000 * 3750 + 100 * 15000
    assert worst_case_nanos([GPT4O], 1000, 100) == 1000 * 2500 + 100 * 10000


def test_canonical_usage_json_round_trips_every_part() -> None:
    usage = Usage(100, 40, cached_tokens=30, cache_write_tokens=20, reasoning_tokens=10)
    data = usage_json(usage)
    assert data == {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                    "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 20},
                    "completion_tokens_details": {"reasoning_tokens": 10}}
    assert usage_from_json(data) == usage
    # OpenAI's own shape is unchanged when there are no cache writes
    assert usage_json(Usage(5, 1))["prompt_tokens_details"] == {"cached_tokens": 0}
