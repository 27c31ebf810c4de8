"""Credentials out of upstream messages (gateway/wire/redact.py), and through dispatch:
a key echoed whole, upper-cased, in part, inside a URL, or any credential-shaped word."""

from __future__ import annotations

import orjson
import pytest

from gateway.canonical import CanonicalRequest, Deployment, Target, UpstreamFailure
from gateway.config.server import Timeouts
from gateway.dispatch.dispatcher import AttemptRunner
from gateway.wire.redact import redact
from policies.scoreboard import Scoreboard
from tests.support.fake_wire import FakeHttpClient, FakeResponse

KEY = "sk-proj-Abc123Def456Ghi789Jkl012"
ORG = "org-Q1w2E3r4T5y6"


@pytest.mark.parametrize("message", [
    f"Incorrect API key provided: {KEY}.",
    f"Incorrect API key provided: {KEY.upper()}.",
    f"INVALID KEY '{KEY.lower()}'",
    f"key {KEY[:14]}... is not valid",  # a front part of it
    f"key ...{KEY[-10:]} is not valid",  # a back part of it
    f"see https://api.example.com/v1/models?key={KEY}&x=1",
    f"header x-org was {ORG}",  # a configured header's value
])
def test_a_configured_secret_never_comes_back(message: str) -> None:
    out = redact(message, [KEY, ORG])
    assert "***" in out
    for secret in (KEY, ORG):
        for i in range(len(secret) - 7):
            assert secret[i:i + 8].lower() not in out.lower()


@pytest.mark.parametrize(("message", "hidden"), [
    ("bad key sk-ant-api03-aaaaaaaaaaaaaaaaaaaaaaaa", "sk-ant-api03-aaaaaaaaaaaaaaaaaaaaaaaa"),
    ("AIzaSyD-1234567890abcdefghijklmnopqrstu is invalid",
     "AIzaSyD-1234567890abcdefghijklmnopqrstu"),
    ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc"),
    ("secret 0f9e8d7c6b5a49382716f5e4d3c2b1a0ZZ was rejected",
     "0f9e8d7c6b5a49382716f5e4d3c2b1a0ZZ"),
])
def test_credential_shaped_words_are_hidden_whoever_they_belong_to(message: str,
                                                                   hidden: str) -> None:
    out = redact(message, [])
    assert hidden not in out and "***" in out


@pytest.mark.parametrize("message", [
    "The model `meta-llama/Llama-3.1-8B-Instruct` does not exist",
    "This model's maximum context length is 8192 tokens; you requested 9000 tokens.",
    "Rate limit reached for gpt-4o-mini-2024-07-18 in organization on tokens per min.",
    "Invalid value for 'temperature': 3.5 is greater than the maximum of 2",
])
def test_ordinary_messages_pass_unchanged(message: str) -> None:
    assert redact(message, [KEY, ORG]) == message


async def test_dispatch_redacts_an_upper_cased_echo_of_the_key() -> None:
    message = orjson.dumps({"error": {"message": f"Incorrect API key: {KEY.upper()}"}})
    client = FakeHttpClient(lambda req: FakeResponse(401, body=message))
    runner = AttemptRunner(client, Scoreboard(), Timeouts())
    dep = Deployment("p/m", "m", "openai", Target("http://p.test/v1", "m", KEY, {"x-org": ORG}))
    req = CanonicalRequest("chat", "m", {"model": "m", "messages": []}, request_id="r")
    with pytest.raises(UpstreamFailure) as err:
        await runner.fetch(req, dep)
    assert err.value.message == "Incorrect API key: ***"
    assert str(err.value) == "Incorrect API key: ***"
