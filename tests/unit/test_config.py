from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config, parse_config

MINIMAL = {
    "pools": [{"name": "gpu", "endpoints": ["http://127.0.0.1:8000/"]}],
    "models": {"m": {"deployments": [{"target": "gpu", "model": "tiny"}]}},
}


def test_demo_config_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "config" / "turnout.yaml")
    assert "demo-chat" in cfg.models
    assert cfg.server.max_body_bytes == 4 * 1024 * 1024


def test_defaults_and_url_normalised() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.pools[0].endpoints == ["http://127.0.0.1:8000"]
    assert cfg.server.port == 8080 and cfg.redis is None
    assert cfg.server.timeouts.first_token_s == 60


def test_env_references_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-secret")
    monkeypatch.delenv("UNSET_KEY", raising=False)
    cfg = parse_config({
        **MINIMAL,
        "providers": [
            {"name": "a", "base_url": "https://x/v1", "api_key": "${TEST_KEY}"},
            {"name": "b", "base_url": "https://y/v1", "api_key": "${UNSET_KEY}"},
            {"name": "c", "base_url": "https://z/v1", "api_key": "${UNSET_KEY:-fallback}"},
        ],
    })
    assert [p.api_key for p in cfg.providers] == ["sk-secret", "", "fallback"]


def test_every_problem_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({
            "server": {"port": 70000, "bogus": 1},
            "pools": [{"name": "gpu", "endpoints": ["ftp://nope"]}],
            "models": {"m": {"deployments": []}},
        })
    problems = info.value.problems
    assert any(p.startswith("server.port:") for p in problems), problems
    assert any(p.startswith("server.bogus:") for p in problems), problems
    assert any(p.startswith("pools.0.endpoints:") for p in problems), problems
    assert any(p.startswith("models.m.deployments:") for p in problems), problems


def test_unknown_target_names_the_deployment() -> None:
    bad = {**MINIMAL, "models": {"m": {"deployments": [{"target": "nope", "model": "x"}]}}}
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    assert info.value.problems == [
        "models.m.deployments.0.target: unknown target 'nope' (known: gpu)"]


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("pools: [{name: gpu, endpoints: ['http://h:1']}]\n"
                    "models: {m: {deployments: [{target: gpu, model: x}]}}\n")
    assert main(["check-config", str(good)]) == 0
    assert "ok (1 models, 1 deployments" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: -1}\nmodels: {}\n")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: server.port:" in err and f"{bad}: models:" in err

    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    assert main(["check-config", str(broken)]) == 1
    assert "invalid YAML" in capsys.readouterr().err


def test_provider_presets_fill_dialect_and_url() -> None:
    cfg = parse_config({
        "providers": [{"name": "g", "preset": "groq", "api_key": "k"},
                      {"name": "c", "preset": "anthropic"},
                      {"name": "t", "preset": "together", "base_url": "https://proxy/v1"}],
        "models": {"m": {"deployments": [{"target": "g", "model": "llama"}]}},
    })
    assert [(p.dialect, p.base_url) for p in cfg.providers] == [
        ("openai", "https://api.groq.com/openai/v1"),
        ("anthropic", "https://api.anthropic.com/v1"),
        ("openai", "https://proxy/v1"),  # an explicit base_url wins
    ]
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": [{"name": "x", "preset": "nope"}], **MINIMAL})
    assert "unknown preset 'nope'" in info.value.problems[0]


@pytest.mark.parametrize(("url", "problem"), [
    ("redis://:s3cret-pw@cache:6379/0?socket_timeout=3", "unsupported options"),
    ("http://:s3cret-pw@cache:6379", "must start with redis://"),
    ("redis://:s3cret-pw@cache:port/0", "cannot parse it"),
    ("rediss://:s3cret-pw@cache:6379/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
])
def test_redis_url_checked_as_the_store_reads_it_without_echoing_it(url: str,
                                                                     problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"redis": {"url": url},
                      "providers": [{"name": "p", "base_url": "http://127.0.0.1:1/v1"}],
                      "models": {"m": {"deployments": [{"target": "p", "model": "x"}]}}})
    (line,) = info.value.problems
    assert line.startswith("redis.url: ") and problem in line
    assert "s3cret-pw" not in str(info.value)


def test_kv_events_and_adapters() -> None:
    pool = {"name": "gpu", "endpoints": ["http://h:1"], "kv_events": {
        "tokenizer": None, "replicas": {"http://h:1/": {"port": 5, "replay_port": 6}}}}
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, "pools": [pool]})
    assert any("needs `tokenizer`" in p for p in info.value.problems), info.value.problems
    sim = {"name": "gpu", "simulate": {"replicas": 2, "kv_blocks": 64}, "kv_events": {
        "replicas": {"http://h:1/": {"port": 5, "replay_port": 6}}}}
    cfg = parse_config({**MINIMAL, "pools": [sim]})  # simulated: the simulator's tokenizer
    assert cfg.pools[0].kv_events is not None
    assert list(cfg.pools[0].kv_events.replicas) == ["http://h:1"]
    on_provider = {**MINIMAL, "providers": [{"name": "p", "base_url": "https://x/v1"}],
                   "models": {"m": {"deployments": [{"target": "p", "model": "x",
                                                     "adapter": "/a"}]}}}
    with pytest.raises(ConfigError) as info:
        parse_config(on_provider)
    assert any("served by a pool" in p for p in info.value.problems), info.value.problems
