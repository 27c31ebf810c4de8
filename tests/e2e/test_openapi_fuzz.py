"""/openapi.json is generated from the rules that validate requests, and a property-based
fuzzer (schemathesis) driven by it finds no server error, no hang and no stack trace on
any operation, client or admin."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.http import openai_format
from selfhost.sim import Simulator, ThreadedSim
from tests.support.accounts import new_key
from tests.support.procs import REPO, Gateway

TEAM_KEY, ADMIN_KEY = new_key(), new_key()
SCHEMATHESIS = REPO / ".venv" / "bin" / "schemathesis"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with ThreadedSim(Simulator("instant")) as sim:
        gw = Gateway({
            "auth": {"admin_key": ADMIN_KEY, "lockout": {"failures": 0}},
            "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
            "models": {"m": {"deployments": [{"target": "sim", "model": "m"}]}},
            "teams": [{"name": "fuzz", "keys": [{"id": "k", "key": TEAM_KEY}]}],
        }, tmp_path_factory.mktemp("gw"))
        yield gw
        gw.stop()


def test_the_document_is_the_validation_rules(gateway: Gateway) -> None:
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert chat["required"] == ["model", "messages"]
    for name, rule in openai_format.CHAT_FIELDS.items():
        assert chat["properties"][name]["anyOf"][0] == rule.schema
    assert chat["properties"]["temperature"]["anyOf"][0]["maximum"] == 2
    assert "/admin/teams/{team}/keys" in doc["paths"]


@pytest.mark.parametrize(("paths", "key"), [("^/(v1|healthz|readyz|openapi)", TEAM_KEY),
                                            ("^/admin/", ADMIN_KEY)])
def test_fuzzing_finds_no_server_error(gateway: Gateway, paths: str, key: str,
                                       tmp_path: Path) -> None:
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{gateway.url}/openapi.json", "--checks",
         "not_a_server_error", "--max-response-time", "5", "--max-examples", "25",
         "--include-path-regex", paths, "--header", f"Authorization: Bearer {key}",
         "--seed", "1", "--generation-database", "none", "--no-color",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-4000:]
    assert " passed" in run.stdout
    logs = gateway.logs()
    assert "Traceback" not in logs and "unhandled error" not in logs
    assert key not in logs
