"""The response cache's pure parts: the key, the policy, the directives, the stored form,
stream assembly and replay."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.cache.assemble import StreamAssembler
from gateway.cache.entry import Entry
from gateway.cache.hit_stream import chunks as replay
from gateway.cache.policy import Policies, deterministic, directives
from gateway.cache.request_key import entry_key, namespace
from gateway.canonical import CanonicalRequest, Operation, StreamChunk, Usage
from gateway.config import parse_config
from gateway.errors import GatewayError

MESSAGES = [{"role": "user", "content": "hi"}]


def request(op: Operation = "chat", model: str = "m", stream: bool = False,
            include_usage: bool = False, **body: Any) -> CanonicalRequest:
    if op == "chat":
        body.setdefault("messages", MESSAGES)
    return CanonicalRequest(op, model, {"model": model, **body}, stream, include_usage)


def key(req: CanonicalRequest, team: str = "a", shared: bool = False) -> str:
    return entry_key(namespace(team, shared), req)


# -- the key -----------------------------------------------------------------------------


def test_fields_that_do_not_change_the_answer_do_not_change_the_key() -> None:
    base = key(request(temperature=0))
    assert key(request(temperature=0, user="u1", metadata={"job": 7}, store=True,
                       stream=True, stream_options={"include_usage": True},
                       service_tier="auto", seed=None)) == base
    assert key(request(temperature=0.0)) == base  # 0 and 0.0 are one temperature
    assert key(request(model="m", temperature=0)) == base


@pytest.mark.parametrize("change", [
    {"temperature": 0.5}, {"seed": 1}, {"max_tokens": 5}, {"top_p": 0.9}, {"stop": ["x"]},
    {"n": 2}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"response_format": {"type": "json_object"}}, {"logprobs": True},
    {"some_new_provider_knob": 1}, {"messages": [{"role": "user", "content": "hi!"}]},
])
def test_everything_else_changes_the_key(change: dict[str, Any]) -> None:
    assert key(request(**{"temperature": 0, **change})) != key(request(temperature=0))


def test_keys_differ_by_team_model_and_operation_and_ignore_dict_order() -> None:
    req = request(temperature=0)
    assert key(req, "a") != key(req, "b")
    assert key(req, "a", shared=True) == key(req, "b", shared=True) != key(req, "a")
    assert key(request(model="other", temperature=0)) != key(req)
    assert key(request("completions", prompt="hi")) != key(request("embeddings", input="hi"))
    a = request(temperature=0, response_format={"type": "json_schema", "a": 1, "b": 2})
    b = request(temperature=0, response_format={"b": 2, "a": 1, "type": "json_schema"})
    assert key(a) == key(b)
    assert key(req).startswith("turnout:cache:team:a:{") and key(req).endswith("}")


# -- policy and directives -----------------------------------------------------------------


def policies(cache: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
             team: dict[str, Any] | None = None) -> Policies:
    cfg = parse_config({
        "providers": [{"name": "p", "base_url": "http://127.0.0.1:1/v1"}],
        "models": {"m": {"deployments": [{"target": "p", "model": "x"}],
                         **({"cache": model} if model else {})},
                   "n": {"deployments": [{"target": "p", "model": "y"}]}},
        "teams": [{"name": "t", **({"cache": team} if team else {})}, {"name": "u"}],
        **({"cache": cache} if cache else {})})
    return Policies(cfg)


def test_off_unless_configured_and_on_per_model_or_team() -> None:
    assert not policies().any_enabled and policies().get("m", "t") is None
    per_model = policies(model={"enabled": True, "shared": True})
    assert per_model.any_enabled
    got = per_model.get("m", "u")
    assert got is not None and got.shared and got.ttl_s == 3600
    assert per_model.get("n", "u") is None
    per_team = policies(team={"enabled": True})
    assert per_team.get("n", "t") is not None and per_team.get("n", "u") is None


def test_the_stricter_setting_wins() -> None:
    p = policies(cache={"enabled": True, "ttl_s": 100},
                 model={"ttl_s": 50, "deterministic_only": False, "max_entry_bytes": 10},
                 team={"ttl_s": 70, "deterministic_only": True, "coalesce": False})
    got = p.get("m", "t")
    assert got is not None
    assert (got.ttl_s, got.deterministic_only, got.coalesce, got.max_entry_bytes) == (
        50, True, False, 10)
    assert policies(cache={"enabled": True}, team={"enabled": False}).get("m", "t") is None
    assert policies(model={"enabled": True}, team={"enabled": False}).get("m", "t") is None


def test_directives() -> None:
    d = directives([])
    assert (d.lookup, d.store, d.max_age_s, d.ttl_s) == (True, True, None, None)
    d = directives([(b"cache-control", b"No-Cache, max-age=30")])
    assert (d.lookup, d.store, d.max_age_s) == (False, True, 30)
    d = directives([(b"cache-control", b"no-store")])
    assert (d.lookup, d.store) == (False, False)
    d = directives([(b"cache-control", b"max-age=soon, private")])  # unparsed: ignored
    assert (d.lookup, d.store, d.max_age_s) == (True, True, None)
    d = directives([(b"x-turnout-cache-ttl", b"60")])
    assert (d.ttl_s, d.store) == (60, True)
    assert directives([(b"x-turnout-cache-ttl", b"0")]).store is False
    with pytest.raises(GatewayError) as err:
        directives([(b"x-turnout-cache-ttl", b"-1")])
    assert err.value.status == 400


def test_deterministic() -> None:
    assert deterministic(request(temperature=0)) and deterministic(request(temperature=0.0))
    assert deterministic(request(temperature=1.0, seed=7))
    assert not deterministic(request()) and not deterministic(request(temperature=0.2))
    assert not deterministic(request(temperature=False))
    assert deterministic(request("embeddings", input="x"))


# -- stored form, assembly, replay ---------------------------------------------------------


def test_entry_round_trip_and_unreadable_entries() -> None:
    e = Entry(b'{"a":"x\\ny"}', Usage(3, 4, 1), 123, 1000.5, [[1, 2]], None, False)
    assert Entry.decode(e.encode()) == e
    assert Entry.decode(b"garbage") is None
    assert Entry.decode(b'{"v":999}\n{}') is None


def chat_chunk(choice: dict[str, Any]) -> StreamChunk:
    return StreamChunk(orjson.dumps({"id": "c1", "object": "chat.completion.chunk",
                                     "created": 7, "model": "up", "choices": [choice]}))


def delta(index: int = 0, finish: str | None = None, lp: Any = None,
          **d: Any) -> StreamChunk:
    return chat_chunk({"index": index, "delta": d, "logprobs": lp, "finish_reason": finish})


def texts(replayed: list[StreamChunk], field: str = "content") -> list[Any]:
    out = []
    for c in replayed:
        if not c.data:
            continue
        for choice in orjson.loads(c.data)["choices"]:
            part = choice.get("delta", choice)
            out.append((choice["index"], part.get(field)))
    return out


def assembled(stream: list[StreamChunk], chat: bool = True) -> Entry:
    a = StreamAssembler(chat, 1 << 20)
    for c in stream:
        a.feed(c)
    entry = a.entry(Usage(5, 4), 99, 1.0)
    assert entry is not None
    return entry


def test_a_stream_replays_chunk_for_chunk_and_assembles_whole() -> None:
    stream = [delta(role="assistant", content=""), delta(content="Hel"),
              delta(content="lo,"), delta(content=" you", finish="stop")]
    entry = assembled(stream)
    body = orjson.loads(entry.body)
    assert body["object"] == "chat.completion" and body["id"] == "c1"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant",
                                                        "content": "Hello, you"},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    out = replay(entry, request(stream=True))
    assert texts(out) == texts(stream) == [(0, ""), (0, "Hel"), (0, "lo,"), (0, " you")]
    last = orjson.loads(out[-2].data)["choices"][0]
    assert last["finish_reason"] == "stop"  # with the last text, as the original had it
    assert out[-1].usage == Usage(5, 4) and out[-1].usage_only and out[-1].data == b""
    with_usage = replay(entry, request(stream=True, include_usage=True))[-1]
    assert orjson.loads(with_usage.data)["usage"]["total_tokens"] == 9


def test_tool_calls_choices_and_logprobs() -> None:
    lp = {"content": [{"token": "a", "logprob": -1.0}, {"token": "b", "logprob": -2.0}]}
    stream = [
        delta(0, role="assistant", content="ab", lp=lp), delta(1, role="assistant", content="x"),
        delta(0, tool_calls=[{"index": 0, "id": "t1", "type": "function",
                              "function": {"name": "f", "arguments": '{"a"'}}]),
        delta(0, tool_calls=[{"index": 0, "function": {"arguments": ": 1}"}}]),
        delta(0, finish="tool_calls"), delta(1, content="y", finish="stop"),
    ]
    entry = assembled(stream)
    choices = orjson.loads(entry.body)["choices"]
    assert choices[0]["message"]["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]
    assert choices[0]["logprobs"] == lp and choices[0]["finish_reason"] == "tool_calls"
    assert choices[1]["message"]["content"] == "xy"
    out = replay(entry, request(stream=True))
    assert [t for i, t in texts(out) if i == 0] == ["ab", None, None]  # text, call, finish
    assert [t for i, t in texts(out) if i == 1] == ["x", "y"]
    calls = [c for c in texts(out, "tool_calls") if c[1]]
    assert calls == [(0, [{"index": 0, "id": "t1", "type": "function",
                           "function": {"name": "f", "arguments": '{"a": 1}'}}])]


def test_completion_logprobs_are_cut_as_the_text_was() -> None:
    def piece(text: str, tokens: list[str], finish: str | None = None) -> StreamChunk:
        lp = {"tokens": tokens, "token_logprobs": [-1.0] * len(tokens)}
        return StreamChunk(orjson.dumps({"id": "c", "object": "text_completion", "created": 1,
                                         "model": "up", "choices": [{
                                             "index": 0, "text": text, "logprobs": lp,
                                             "finish_reason": finish}]}))

    stream = [piece(" a b", [" a", " b"]), piece(" c", [" c"], "length")]
    entry = assembled(stream, chat=False)
    assert orjson.loads(entry.body)["choices"][0]["text"] == " a b c"
    out = replay(entry, request("completions", prompt="p", stream=True))
    got = [orjson.loads(c.data)["choices"][0] for c in out if c.data]
    assert [(g["text"], g["logprobs"]["tokens"]) for g in got] == [
        (" a b", [" a", " b"]), (" c", [" c"])]
    assert got[-1]["finish_reason"] == "length"


def test_a_non_streamed_answer_replays_as_one_text_chunk() -> None:
    body = orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "up",
                         "choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": "whole"},
                                      "finish_reason": "stop"}]})
    out = replay(Entry(body, Usage(1, 1), 0, 0.0), request(stream=True))
    assert texts(out) == [(0, "whole"), (0, None)]
    assert orjson.loads(out[1].data)["choices"][0]["finish_reason"] == "stop"


def test_too_much_stream_stops_assembly() -> None:
    a = StreamAssembler(True, 10)
    for _ in range(20):
        a.feed(delta(content="0123456789"))
    assert a.overflow and a.entry(Usage(), 0, 0.0) is None
