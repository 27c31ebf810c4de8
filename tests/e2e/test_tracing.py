"""OpenTelemetry traces, in process: the span tree of a request (server span, admission,
routing, each upstream attempt) with its GenAI attributes, asserted through the SDK's
in-memory exporter; the W3C trace context from the client to the upstream (seen at the
simulator); refusals; content capture per team; and nothing at all when tracing is off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.accounting.admission import Admission
from gateway.dispatch.attempts import new_attempt
from gateway.planner import Planner
from selfhost.sim import ThreadedSim
from tests.support.inproc import InProcess, serving, sim_fixture
from tests.support.procs import free_port

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PROVIDER_KEY = "sk-provider-secret-for-tracing-0123"
KEYS = {"alpha": "tk-alpha-secret-key-0123456789", "beta": "tk-beta-secret-key-0123456789"}
MESSAGES: Any = [{"role": "user", "content": "Name three colours"}]


sim = sim_fixture()


def config(sim: ThreadedSim, tracing: dict[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "prov", "base_url": sim.url + "/v1", "api_key": PROVIDER_KEY},
                      {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"}],
        "models": {
            "m": {"deployments": [{"target": "prov", "model": "tiny",
                                   "price": {"input": 1.0, "output": 2.0}}]},
            "down": {"deployments": [{"target": "dead", "model": "gone"}], "fallbacks": ["m"]},
        },
        "telemetry": {"tracing": tracing if tracing is not None
                      else {"enabled": True, "exporter": "none"}},
        **extra,
    }


def record(gw: InProcess) -> InMemorySpanExporter:
    tracing = gw.services.telemetry.tracing
    assert tracing is not None
    exporter = InMemorySpanExporter()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def parent_id(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


async def test_span_tree_follows_genai_conventions_and_reaches_upstream(sim: ThreadedSim
                                                                       ) -> None:
    async with serving(config(sim)) as gw:
        spans = record(gw)
        r = await gw.client.post("/v1/chat/completions", headers={"traceparent": TRACEPARENT},
                                 json={"model": "m", "messages": MESSAGES, "max_tokens": 7,
                                       "temperature": 0.5})
        assert r.status_code == 200
        body = r.json()
        upstream_traceparent = sim.sim.stats.last_headers["traceparent"]
    tree = by_name(spans.get_finished_spans())
    assert sorted(tree) == ["chat m", "chat tiny", "turnout.admission", "turnout.route"]
    assert all(len(v) == 1 for v in tree.values())
    server, attempt = tree["chat m"][0], tree["chat tiny"][0]
    admission, route = tree["turnout.admission"][0], tree["turnout.route"][0]

    # One trace, continuing the client's; every step is a child of the server span.
    assert {hex_ids(s)[0] for s in spans.get_finished_spans()} == {TRACE_ID}
    assert server.kind is SpanKind.SERVER and parent_id(server) == PARENT_ID
    server_id = hex_ids(server)[1]
    assert [parent_id(s) for s in (admission, route, attempt)] == [server_id] * 3
    assert attempt.kind is SpanKind.CLIENT
    # The upstream got the attempt span's context: its trace, the attempt as parent.
    version, trace_id, span_id, _flags = upstream_traceparent.split("-")
    assert (version, trace_id, span_id) == ("00", TRACE_ID, hex_ids(attempt)[1])

    usage = body["usage"]
    s = server.attributes or {}
    assert s["gen_ai.operation.name"] == "chat" and s["gen_ai.request.model"] == "m"
    assert s["gen_ai.request.max_tokens"] == 7 and s["gen_ai.request.temperature"] == 0.5
    # The span names the model that answered; the client gets the name it asked for.
    assert s["gen_ai.response.model"] == "tiny" and body["model"] == "m"
    assert s["gen_ai.response.id"] == body["id"]
    assert s["gen_ai.response.finish_reasons"] == ("length",)
    assert s["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert s["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 7
    assert s["gen_ai.provider.name"] == "openai"
    assert s["turnout.deployment"] == r.headers["x-turnout-deployment"] == "prov/tiny"
    assert f"{s['turnout.policy']}; {s['turnout.reason']}" == r.headers["x-turnout-route"]
    assert s["turnout.request_id"] == r.headers["x-request-id"]
    assert s["turnout.team"] == "anonymous" and s["turnout.retries"] == 0
    assert s["turnout.cache"] == "off" and s["turnout.stream"] is False
    expected_cost = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert s["turnout.cost_usd"] == pytest.approx(expected_cost)
    assert s["http.response.status_code"] == 200
    assert "gen_ai.input.messages" not in s and "gen_ai.output.messages" not in s

    a = attempt.attributes or {}
    assert a["gen_ai.request.model"] == "tiny" and a["gen_ai.request.max_tokens"] == 7
    assert a["gen_ai.provider.name"] == "openai" and a["server.address"] == "127.0.0.1"
    assert a["server.port"] == int(sim.url.rsplit(":", 1)[1])
    assert a["turnout.attempt"] == 1 and a["turnout.outcome"] == "ok"
    assert a["gen_ai.usage.output_tokens"] == 7 and a["gen_ai.response.id"] == body["id"]

    ra = route.attributes or {}
    assert ra["turnout.choice"] == "prov/tiny" and ra["turnout.candidates"] == ("prov/tiny",)
    assert ra["turnout.policy"] == "slo-cost"
    assert (admission.attributes or {})["turnout.team"] == "anonymous"
    # Children start after and end before the server span.
    for child in (admission, route, attempt):
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time


async def test_stream_attempt_records_time_to_first_token(sim: ThreadedSim) -> None:
    async with serving(config(sim)) as gw:
        spans = record(gw)
        r = await gw.client.post("/v1/chat/completions", json={
            "model": "m", "messages": MESSAGES, "stream": True})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        assert "traceparent" in sim.sim.stats.last_headers  # a new trace, still propagated
    tree = by_name(spans.get_finished_spans())
    server, attempt = tree["chat m"][0], tree["chat tiny"][0]
    assert server.parent is None  # no traceparent from the client: a new trace
    [event] = attempt.events
    ttft = (attempt.attributes or {})["turnout.ttft_s"]
    assert event.name == "gen_ai.first_token"
    assert event.timestamp == attempt.start_time + int(ttft * 1e9)
    assert attempt.start_time < event.timestamp <= (attempt.end_time or 0)
    s = server.attributes or {}
    assert s["turnout.stream"] is True and s["gen_ai.response.finish_reasons"] == ("stop",)
    assert str(s["gen_ai.response.id"]).startswith("chatcmpl-")
    assert s["gen_ai.usage.output_tokens"] == (attempt.attributes or {})[
        "gen_ai.usage.output_tokens"] > 0


async def test_failed_attempt_then_fallback_are_sibling_spans(sim: ThreadedSim) -> None:
    async with serving(config(sim)) as gw:
        spans = record(gw)
        r = await gw.client.post("/v1/chat/completions",
                                 json={"model": "down", "messages": MESSAGES})
        assert r.status_code == 200 and r.headers["x-turnout-deployment"] == "prov/tiny"
    tree = by_name(spans.get_finished_spans())
    [server] = tree["chat down"]
    [failed], [answered] = tree["chat gone"], tree["chat tiny"]
    assert len(tree["turnout.route"]) == 2  # the plan, then the fallback model's plan
    f, a = failed.attributes or {}, answered.attributes or {}
    assert (f["turnout.attempt"], a["turnout.attempt"]) == (1, 2)
    assert f["turnout.outcome"] == "failed" and f["error.type"] == "connect_error"
    assert failed.status.status_code is StatusCode.ERROR
    assert a["turnout.outcome"] == "ok" and answered.status.status_code is StatusCode.UNSET
    assert (failed.end_time or 0) <= answered.start_time
    s = server.attributes or {}
    assert s["turnout.retries"] == 1 and s["turnout.deployment"] == "prov/tiny"
    assert "fallback to m" in str(s["turnout.reason"])


async def test_refusals_end_the_server_span_and_content_is_opt_in_per_team(
        sim: ThreadedSim) -> None:
    teams = [{"name": name, "limits": {"rpm": 2}, "keys": [{"id": name, "key": key}]}
             for name, key in KEYS.items()]
    cfg = config(sim, {"enabled": True, "exporter": "none", "capture_content": ["alpha"]},
                 teams=teams)
    async with serving(cfg) as gw:
        spans = record(gw)
        bad = await gw.client.post("/v1/chat/completions", json={"model": "m"},
                                   headers={"authorization": "Bearer nope-not-a-key"})
        assert bad.status_code == 401
        statuses = []
        for name in ("alpha", "beta", "beta", "beta"):
            r = await gw.client.post(
                "/v1/chat/completions", json={"model": "m", "messages": MESSAGES},
                headers={"authorization": f"Bearer {KEYS[name]}"})
            statuses.append(r.status_code)
        assert statuses == [200, 200, 200, 429]
    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert [(s.attributes or {})["http.response.status_code"] for s in servers] == [
        401, 200, 200, 200, 429]
    unauthorized, alpha, *_, limited = servers
    assert (unauthorized.attributes or {})["error.type"] == "invalid_api_key"
    assert unauthorized.name == "chat"  # refused before the body was read: no model yet
    assert not [s for s in finished if s.parent is not None
                and s.parent.span_id == unauthorized.get_span_context().span_id]
    assert limited.name == "chat m" and (limited.attributes or {})["turnout.team"] == "beta"
    assert (limited.attributes or {})["error.type"] == "rate_limit_exceeded"
    [refusing] = [s for s in finished if s.name == "turnout.admission"
                  and s.status.status_code is StatusCode.ERROR]
    assert refusing.parent is not None
    assert refusing.parent.span_id == limited.get_span_context().span_id

    # Content: the alpha team opted in; beta did not.
    a = alpha.attributes or {}
    assert a["gen_ai.input.messages"] == '[{"role":"user","content":"Name three colours"}]'
    assert str(a["gen_ai.output.messages"]).startswith('[{"role":"assistant","content":"')
    for span in servers[2:]:
        assert "gen_ai.input.messages" not in (span.attributes or {})
    # No key, client's or provider's, on any span.
    values = " ".join(str(v) for s in finished for v in (s.attributes or {}).values())
    assert all(secret not in values for secret in [*KEYS.values(), PROVIDER_KEY])


async def test_streamed_content_capture(sim: ThreadedSim) -> None:
    cfg = config(sim, {"enabled": True, "exporter": "none", "capture_content": ["anonymous"]})
    async with serving(cfg) as gw:
        spans = record(gw)
        plain = await gw.client.post("/v1/chat/completions",
                                     json={"model": "m", "messages": MESSAGES})
        streamed = await gw.client.post("/v1/chat/completions",
                                        json={"model": "m", "messages": MESSAGES,
                                              "stream": True})
        assert plain.status_code == streamed.status_code == 200
    text = plain.json()["choices"][0]["message"]["content"]
    servers = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    outputs = [json.loads(str((s.attributes or {})["gen_ai.output.messages"])) for s in servers]
    assert [[(m["role"], m["content"]) for m in out] for out in outputs] == [
        [("assistant", text)]] * 2


async def test_tracing_off_builds_nothing_and_propagates_nothing(sim: ThreadedSim) -> None:
    async with serving(config(sim, {"enabled": False})) as gw:
        telemetry = gw.services.telemetry
        assert telemetry.tracing is None
        pipeline = gw.services.pipeline
        assert type(pipeline.planner) is Planner
        assert type(pipeline.admission) is Admission
        assert pipeline.dispatcher.runner._attempt is new_attempt  # no span per attempt
        r = await gw.client.post("/v1/chat/completions", headers={"traceparent": TRACEPARENT},
                                 json={"model": "m", "messages": MESSAGES})
        assert r.status_code == 200
        assert "traceparent" not in sim.sim.stats.last_headers


async def test_cache_lookup_span_and_result(sim: ThreadedSim) -> None:
    async with serving(config(sim, cache={"enabled": True})) as gw:
        spans = record(gw)
        body = {"model": "m", "messages": MESSAGES, "temperature": 0}
        first = await gw.client.post("/v1/chat/completions", json=body)
        again = await gw.client.post("/v1/chat/completions", json=body)
        assert first.status_code == again.status_code == 200
        assert again.json()["choices"] == first.json()["choices"]
    finished = spans.get_finished_spans()
    lookups = [(s.attributes or {})["turnout.cache.result"] for s in finished
               if s.name == "turnout.cache"]
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert lookups == ["miss", "hit"]
    assert [(s.attributes or {})["turnout.cache"] for s in servers] == ["miss", "hit"]
    assert len([s for s in finished if s.kind is SpanKind.CLIENT]) == 1  # the hit: none


async def test_sampled_out_requests_build_no_spans_but_pass_the_trace_on(
        sim: ThreadedSim) -> None:
    async with serving(config(sim, {"enabled": True, "exporter": "none",
                                    "sample_ratio": 0.0})) as gw:
        spans = record(gw)
        unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
        r = await gw.client.post("/v1/chat/completions", headers={"traceparent": unsampled},
                                 json={"model": "m", "messages": MESSAGES})
        assert r.status_code == 200
        version, trace_id, _span_id, flags = sim.sim.stats.last_headers["traceparent"].split("-")
        assert (version, trace_id) == ("00", TRACE_ID) and int(flags, 16) & 1 == 0
        # A sampled client trace is followed whatever the ratio (parent-based).
        r = await gw.client.post("/v1/chat/completions", headers={"traceparent": TRACEPARENT},
                                 json={"model": "m", "messages": MESSAGES})
        assert r.status_code == 200
    assert sorted(s.name for s in spans.get_finished_spans()) == [
        "chat m", "chat tiny", "turnout.admission", "turnout.route"]
