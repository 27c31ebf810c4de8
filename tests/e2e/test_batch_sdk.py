"""The Files and Batch APIs end to end with the official `openai` SDK against a running
gateway whose lane runs inside `turnout serve` (in-memory store): upload, create, poll,
download; output per custom_id; errors in the error file; the discount in the ledger;
cancel and expiry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

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
        "pools": [pool_config("gpu", sims.urls[:2]), pool_config("down", sims.urls[2:])],
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
