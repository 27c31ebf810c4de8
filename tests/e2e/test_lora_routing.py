"""LoRA adapters through a running gateway, over simulated vLLM replicas that serve
adapters as vLLM does (`/v1/models`, `/v1/load_lora_adapter`): requests for an adapter go
only to replicas that have it loaded; one no replica has is loaded on demand where the
pool allows (and the route header says so), else refused with 503."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from selfhost.sim import Simulator, ThreadedSim
from selfhost.sim_lora import Adapters
from tests.support.procs import Gateway

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def sims() -> Iterator[ThreadedSim]:
    a = Simulator("instant", adapters=Adapters({"sql": "/adapters/sql"}, runtime_updates=True))
    b = Simulator("instant", adapters=Adapters(runtime_updates=True))
    c = Simulator("instant", adapters=Adapters())
    with ThreadedSim(a, b, c) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(sims: ThreadedSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b, c = sims.urls
    config = {
        "pools": [{"name": "p", "endpoints": [a, b], "lora": {"dynamic_loading": True}},
                  {"name": "fixed", "endpoints": [c]}],
        "models": {
            "base": {"deployments": [{"target": "p", "model": "sim-model"}]},
            "sql": {"deployments": [{"target": "p", "model": "sql", "adapter": "/adapters/sql",
                                     "price": {"input": 1.0, "output": 2.0}}]},
            "legal": {"deployments": [{"target": "p", "model": "legal",
                                       "adapter": "/adapters/legal"}]},
            "nowhere": {"deployments": [{"target": "fixed", "model": "nowhere",
                                         "adapter": "/adapters/nowhere"}]},
        },
    }
    gw = Gateway(config, tmp_path_factory.mktemp("lora"))
    yield gw
    gw.stop()


def _where(client: OpenAI, model: str) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI,
                                                           max_tokens=2)
    return raw.headers["x-turnout-deployment"], raw.headers["x-turnout-route"]


def test_adapter_requests_go_only_where_it_is_loaded(gateway: Gateway,
                                                     sims: ThreadedSim) -> None:
    client = OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
    a_id = "p/" + sims.urls[0].split("://")[1]
    assert {_where(client, "sql")[0] for _ in range(8)} == {a_id}
    assert len({_where(client, "base")[0] for _ in range(8)}) == 2  # the base model: both
    assert sims.sims[1].stats.by_path.get("/v1/load_lora_adapter") is None
    models = {m.id for m in client.models.list()}
    assert {"base", "sql", "legal", "nowhere"} <= models


def test_an_adapter_no_replica_has_is_loaded_on_demand(gateway: Gateway,
                                                       sims: ThreadedSim) -> None:
    client = OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
    where, route = _where(client, "legal")
    assert route.endswith(f"; loaded adapter legal on {where}"), route
    loaded = [s for s in sims.sims[:2] if s.adapters is not None and "legal" in s.adapters]
    assert len(loaded) == 1
    assert {_where(client, "legal")[0] for _ in range(6)} == {where}


def test_an_adapter_no_replica_has_without_dynamic_loading_is_a_503(gateway: Gateway) -> None:
    client = OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="nowhere", messages=HI, max_tokens=2)
    assert err.value.status_code == 503
    assert "not loaded on any replica" in str(err.value)


