"""The README's run command: the demo config serves real answers with no keys and no GPU."""

from __future__ import annotations

from pathlib import Path

import yaml
from openai import OpenAI

from tests.conftest import GatewayFactory
from tests.support.procs import REPO

NO_KEYS = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}  # the README's keyless demo
DEMO_KEY = "tk-demo-local-only-not-a-secret"  # the config's default for $TURNOUT_DEMO_KEY


def demo_config() -> dict[str, object]:
    cfg: dict[str, object] = yaml.safe_load((REPO / "config" / "turnout.yaml").read_text())
    return cfg


def test_demo_config_serves_keyless(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw = gateway_factory(demo_config(), env=NO_KEYS)
    client = OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    assert {m.id for m in client.models.list()} == {"demo-chat", "gpt-4o-mini", "demo-embed",
                                                   "claude-haiku"}

    seen = set()
    # Replica ports differ per run, so does the hash ring: enough prompts that all of them
    # landing on one replica is vanishingly unlikely.
    for system in ("You are terse.", "You are verbose.", "You are a pirate.", "Be kind.",
                   "Answer in French.", "Answer in haiku.", "Answer in German.",
                   "You are a poet.", "Be brief.", "Explain like I am five.",
                   "You are a lawyer.", "Use bullet points."):
        raw = client.chat.completions.with_raw_response.create(
            model="demo-chat", max_tokens=4, messages=[
                {"role": "system", "content": system}, {"role": "user", "content": "Hello!"}])
        assert raw.parse().choices[0].message.content
        seen.add(raw.headers["x-turnout-deployment"])
        assert raw.headers["x-turnout-route"].startswith("slo-cost; cheapest meeting ttft<=500ms")
    # slo-cost keeps the demo on the cheaper self-hosted pool; prefix affinity spreads
    # different system prompts over both of its replicas.
    assert len(seen) == 2 and all(d.startswith("local-gpu/127.0.0.1:") for d in seen)

    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(text.split()) == 16  # the simulator's default answer length
    assert len(client.embeddings.create(model="demo-embed", input="x").data[0].embedding) == 16
    assert "using a simulated cloud upstream" in gw.logs()
    assert f"demo key (team demo): {DEMO_KEY}" in gw.logs()


def test_two_workers_serve(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(demo_config(), workers=2, env=NO_KEYS)
    client = OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    for _ in range(8):
        assert client.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": "Hello!"}]).choices
    assert gw.logs().count("Application startup complete") == 2


def test_uvicorns_own_http_protocol_serves_too(gateway_factory: GatewayFactory) -> None:
    """`server.http: httptools`, the fallback our protocol replaces: it answers and streams
    (without our server's disconnect extension, the pipeline watches `receive` instead)."""
    config = demo_config()
    config.setdefault("server", {})["http"] = "httptools"
    gw = gateway_factory(config, env=NO_KEYS)
    client = OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    assert client.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "Hello!"}]).choices
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(text.split()) == 16
