"""The Files and Batch APIs end to end with the official `openai` SDK against a running
gateway whose lane runs inside `turnout serve` (in-memory store): upload, create, poll,
download; output per custom_id; errors in the error file; the discount in the ledger;
/v1/responses and /v1/embeddings batches; cancel and expiry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import CreateEmbeddingResponse
from openai.types.responses import Response

from selfhost.sim import Faults, Simulator, ThreadedSim
from tests.support.accounts import auth, eventually, new_key
from tests.support.batches import (
    SMALL_GPU,
    chat_lines,
    jsonl,
    pool_config,
    read_jsonl,
    wait_batch,
)
from tests.support.procs import Gateway

KEY, OTHER, ADMIN = new_key(), new_key(), new_key()
PRICE = {"input": 1.0, "output": 2.0}


def config(sims: ThreadedSim, tmp: Path, **batch: Any) -> dict[str, Any]:
    return {
        "auth": {"admin_key": ADMIN},
        # The simulator serves no /v1/responses: Responses requests go to it as chat.
        "pools": [{**pool_config("gpu", sims.urls[:2]), "responses_api": False},
                  pool_config("down", sims.urls[2:])],
        "providers": [{"name": "cloud", "base_url": sims.urls[0] + "/v1"}],
        "models": {"chat": {"deployments": [{"target": "gpu", "model": "m", "price": PRICE}]},
                   "embed": {"deployments": [{"target": "gpu", "model": "e"}]},
                   "stuck": {"deployments": [{"target": "down", "model": "m"}]},
                   "busy": {"deployments": [{"target": "down", "model": "m"}]},
                   "on-demand": {"deployments": [{"target": "cloud", "model": "m"}]}},
        "routing": {"slo_ttft_ms": 500},
        "teams": [{"name": "lab", "keys": [{"id": "k1", "key": KEY}]},
                  {"name": "other", "keys": [{"id": "k2", "key": OTHER}]}],
        # A batch of `busy` spills to `on-demand` at once (its pool never has room).
        "batch": {"storage": {"path": str(tmp / "files")},
                  "spill": {"after": 1e-5, "models": {"busy": "on-demand"}}, **batch},
    }


@pytest.fixture(scope="module")
def sims() -> Iterator[ThreadedSim]:
    # Two replicas of a small GPU, and one whose /health fails: no headroom, ever.
    with ThreadedSim(Simulator(SMALL_GPU), Simulator(SMALL_GPU, seed=1),
                     Simulator(SMALL_GPU, faults=Faults(unhealthy=True))) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(sims: ThreadedSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw")
    gw = Gateway(config(sims, tmp), tmp)
    yield gw
    gw.stop()


def client(gw: Gateway, key: str = KEY) -> OpenAI:
    return OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def test_upload_run_download(gateway: Gateway) -> None:
    c = client(gateway)
    rows = chat_lines(30)
    rows.append({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": "chat", "messages": "not a list"}})
    rows.append({"custom_id": "no-such-model", "method": "POST",
                 "url": "/v1/chat/completions",
                 "body": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}})
    uploaded = c.files.create(file=jsonl(rows), purpose="batch")
    assert (uploaded.purpose, uploaded.filename) == ("batch", "input.jsonl")
    assert c.files.retrieve(uploaded.id).bytes == uploaded.bytes
    batch = c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                             completion_window="24h", metadata={"run": "sdk"})
    assert (batch.status, batch.metadata) == ("validating", {"run": "sdk"})
    done = wait_batch(c, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (32, 30, 2)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.output_file_id and done.error_file_id and done.usage is not None
    output = read_jsonl(c.files.content(done.output_file_id).read())
    assert set(output) == {f"req-{i}" for i in range(30)}
    for custom_id, row in output.items():
        response = row["response"]
        assert response["status_code"] == 200 and row["error"] is None
        assert response["body"]["choices"][0]["message"]["content"], custom_id
        assert response["request_id"] == row["id"] and row["id"].startswith("batch_req_")
    errors = read_jsonl(c.files.content(done.error_file_id).read())
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"]["error"]["param"] == "messages"
    assert errors["no-such-model"]["response"]["status_code"] == 404
    assert done.usage.output_tokens == 30 * 4
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(batch.id)
    # Metered like interactive traffic, once per line, at the batch discount (0.5).
    events = eventually(lambda: (e := ledger(gateway)) and len(e) >= 30 and e)
    mine = {e["request_id"]: e for e in events if e["request_id"] in
            {r["id"] for r in output.values()}}
    assert len(mine) == 30
    for event in mine.values():
        list_price = event["prompt_tokens"] * 1.0 + event["completion_tokens"] * 2.0
        assert round(event["cost_usd"] * 1e9) == round(list_price * 1000 * 0.5)


def assert_discounted(gw: Gateway, ids: set[str]) -> None:
    """Each request id has one usage event, at the batch discount (0.5) of the list price."""
    events = eventually(lambda: (e := [x for x in ledger(gw) if x["request_id"] in ids])
                        and len(e) >= len(ids) and e)
    assert len(events) == len(ids) and {e["request_id"] for e in events} == ids
    for event in events:
        list_price = event["prompt_tokens"] * 1.0 + event["completion_tokens"] * 2.0
        assert round(event["cost_usd"] * 1e9) == round(list_price * 1000 * 0.5)


def test_responses_batch(gateway: Gateway) -> None:
    """/v1/responses lines run as POST /v1/responses does; each output body is a Response.
    Lines are stateless: not stored, and neither `previous_response_id` nor `store: true`."""
    c = client(gateway)
    rows: list[dict[str, Any]] = [
        {"custom_id": f"resp-{i}", "method": "POST", "url": "/v1/responses",
         "body": {"model": "chat", "input": f"question {i}", "max_output_tokens": 4,
                  "instructions": "be brief", "metadata": {"line": str(i)}}}
        for i in range(5)]
    rows += [{"custom_id": name, "method": "POST", "url": "/v1/responses",
              "body": {"model": "chat", "input": "x", **extra}} for name, extra in (
                  ("continues", {"previous_response_id": "resp_abc"}),
                  ("stored", {"store": True}),
                  ("background", {"background": True}))]
    f = c.files.create(file=jsonl(rows), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/responses",
                             completion_window="24h")
    assert batch.endpoint == "/v1/responses"
    done = wait_batch(c, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 3)
    assert done.output_file_id and done.error_file_id and done.usage is not None
    assert done.usage.output_tokens == 5 * 4
    output = read_jsonl(c.files.content(done.output_file_id).read())
    assert set(output) == {f"resp-{i}" for i in range(5)}
    for custom_id, row in output.items():
        assert row["response"]["status_code"] == 200 and row["error"] is None
        response = Response.model_validate(row["response"]["body"])
        assert response.object == "response" and response.id.startswith("resp_")
        assert response.output_text, custom_id
        assert response.model == "chat" and response.instructions == "be brief"
        assert response.metadata == {"line": custom_id.removeprefix("resp-")}
        assert response.usage is not None and response.usage.output_tokens == 4
        assert response.store is False
        with pytest.raises(openai.NotFoundError):  # not stored: nothing to continue
            c.responses.retrieve(response.id)
    errors = read_jsonl(c.files.content(done.error_file_id).read())
    for custom_id, param in (("continues", "previous_response_id"), ("stored", "store"),
                             ("background", "background")):
        answer = errors[custom_id]["response"]
        assert answer["status_code"] == 400, custom_id
        assert answer["body"]["error"]["param"] == param
    assert "not supported in a batch" in \
        errors["continues"]["response"]["body"]["error"]["message"]
    assert_discounted(gateway, {r["id"] for r in output.values()})


def test_embeddings_batch(gateway: Gateway) -> None:
    c = client(gateway)
    rows = [{"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": "embed", "input": [f"text {i}", f"more text {i}"]}}
            for i in range(4)]
    f = c.files.create(file=jsonl(rows), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                             completion_window="24h")
    done = wait_batch(c, batch.id)
    assert done.status == "completed" and done.output_file_id, done
    assert done.request_counts is not None and done.request_counts.completed == 4
    assert done.error_file_id is None
    output = read_jsonl(c.files.content(done.output_file_id).read())
    assert set(output) == {f"emb-{i}" for i in range(4)}
    for row in output.values():
        assert row["response"]["status_code"] == 200
        answer = CreateEmbeddingResponse.model_validate(row["response"]["body"])
        assert answer.object == "list" and [d.index for d in answer.data] == [0, 1]
        for item in answer.data:
            assert item.embedding and all(isinstance(x, float) for x in item.embedding)
    ids = {r["id"] for r in output.values()}
    events = eventually(lambda: [e for e in ledger(gateway) if e["request_id"] in ids])
    assert len(events) == 4 and all(e["completion_tokens"] == 0 for e in events)


def ledger(gw: Gateway) -> list[dict[str, Any]]:
    r = httpx.get(f"{gw.url}/admin/events", headers=auth(ADMIN),
                  params={"team": "lab", "format": "json"})
    data: list[dict[str, Any]] = r.json()["data"]
    return data


def test_files_are_the_teams_own(gateway: Gateway) -> None:
    c, other = client(gateway), client(gateway, OTHER)
    f = c.files.create(file=jsonl(chat_lines(2)), purpose="batch")
    assert f.id in {x.id for x in c.files.list()}
    assert f.id not in {x.id for x in other.files.list()}
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.content(f.id)


def test_refusals_in_openai_shape(gateway: Gateway) -> None:
    c = client(gateway)
    with pytest.raises(openai.BadRequestError) as bad:
        c.files.create(file=jsonl(chat_lines(1)), purpose="fine-tune")
    assert bad.value.body["param"] == "purpose"  # type: ignore[index]
    not_jsonl = httpx.post(f"{gateway.url}/v1/files", headers=auth(KEY),
                           files={"file": ("x.jsonl", b"{}\nnot json\n")},
                           data={"purpose": "batch"})
    assert not_jsonl.status_code == 400 and "line 2" in not_jsonl.json()["error"]["message"]
    f = c.files.create(file=jsonl(chat_lines(1)), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/audio/speech",  # type: ignore[arg-type]
                         completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="48h")  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=gateway.url + "/v1", api_key="tk-wrong", max_retries=0).files.list()


def test_batch_that_fails_validation(gateway: Gateway) -> None:
    c = client(gateway)
    rows = chat_lines(2) + chat_lines(1)  # req-0 twice
    f = c.files.create(file=jsonl(rows), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    failed = wait_batch(c, batch.id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    assert failed.errors.data[0].code == "duplicate_custom_id"
    assert failed.errors.data[0].line == 3


def test_cancel(gateway: Gateway) -> None:
    c = client(gateway)
    f = c.files.create(file=jsonl(chat_lines(20, model="stuck")), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    wait_batch(c, batch.id, until=("in_progress",))
    assert c.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    cancelled = wait_batch(c, batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    assert cancelled.request_counts is not None and cancelled.request_counts.completed == 0
    assert c.batches.cancel(batch.id).status == "cancelled"  # again: no change
    listed = [b.id for b in c.batches.list(limit=100)]
    assert batch.id in listed
    progress = httpx.get(f"{gateway.url}/v1/batches/{batch.id}", headers=auth(KEY))
    assert progress.headers["x-turnout-batch-status"] == "cancelled"
    assert progress.headers["x-turnout-batch-pending"] == "20"


def test_expiry(sims: ThreadedSim, tmp_path: Path) -> None:
    """Lines whose pool never has room expire, each in the error file as batch_expired."""
    gw = Gateway(config(sims, tmp_path, completion_window_s=5), tmp_path)
    try:
        c = client(gw)
        ok = c.files.create(file=jsonl(chat_lines(3)), purpose="batch")
        stuck = c.files.create(file=jsonl(chat_lines(5, model="stuck")), purpose="batch")
        fine = c.batches.create(input_file_id=ok.id, endpoint="/v1/chat/completions",
                                completion_window="24h")
        late = c.batches.create(input_file_id=stuck.id, endpoint="/v1/chat/completions",
                                completion_window="24h")
        assert wait_batch(c, fine.id).status == "completed"
        expired = wait_batch(c, late.id)
        assert expired.status == "expired" and expired.expired_at
        assert expired.error_file_id and expired.output_file_id is None
        errors = read_jsonl(c.files.content(expired.error_file_id).read())
        assert set(errors) == {f"req-{i}" for i in range(5)}
        assert {e["error"]["code"] for e in errors.values()} == {"batch_expired"}
    finally:
        gw.stop()
    assert "Traceback" not in gw.logs()


def test_spill_to_an_on_demand_model(gateway: Gateway) -> None:
    """Past `spill.after` of its window, a batch whose pool has no room runs elsewhere."""
    c = client(gateway)
    f = c.files.create(file=jsonl(chat_lines(6, model="busy")), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    done = wait_batch(c, batch.id)
    assert done.status == "completed" and done.output_file_id
    output = read_jsonl(c.files.content(done.output_file_id).read())
    assert len(output) == 6
    ids = {row["id"] for row in output.values()}
    events = eventually(lambda: [e for e in ledger(gateway) if e["request_id"] in ids])
    assert {e["deployment"] for e in events} == {"cloud/m"} and len(events) == 6
