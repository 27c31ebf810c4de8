"""Where the console plugs in: mounted only while someone can log in, and fed by
telemetry's settled hook even when metrics, the access log and tracing are all off."""

from __future__ import annotations

from typing import Any

from gateway.app import create_app
from gateway.config import parse_config
from gateway.console.parts import console_recorder
from gateway.console.recorder import Recorder
from gateway.telemetry import Telemetry
from tests.support.console import settled

ADMIN = "admin-key-0123456789abcdefghijklmnopq"


def config(**extra: Any) -> Any:
    return parse_config({"providers": [{"name": "p", "base_url": "http://127.0.0.1:1/v1"}],
                         "models": {"chat": {"deployments": [{"target": "p", "model": "m"}]}},
                         **extra})


def console_paths(cfg: Any) -> list[str]:
    return [r.path for r in create_app(cfg).app.routes  # type: ignore[attr-defined]
            if r.path.startswith("/console")]


def test_mounted_only_when_someone_can_log_in() -> None:
    assert console_paths(config()) == [] and console_recorder(config()) is None
    with_admin = config(auth={"admin_key": ADMIN})
    assert console_paths(with_admin) == ["/console", "/console/{rest:path}"]
    assert console_recorder(with_admin) is not None
    off = config(auth={"admin_key": ADMIN}, console={"enabled": False})
    assert console_paths(off) == [] and console_recorder(off) is None


def test_telemetry_feeds_the_recorder_with_everything_else_off() -> None:
    cfg = config(auth={"admin_key": ADMIN},
                 telemetry={"metrics": False, "access_log": False},
                 console={"sample_per_s": 100})
    recorder = console_recorder(cfg)
    assert isinstance(recorder, Recorder)
    telemetry = Telemetry(cfg, None, None, recorder)
    assert telemetry.active  # so the pipeline calls it
    ctx, out, args, plan = settled()
    telemetry.settled(ctx, out, args, None, plan)
    assert recorder.drain(1.0) == 0  # nobody watching: nothing kept
    recorder.watching = True
    telemetry.settled(ctx, out, args, None, plan)
    assert recorder.drain(1.0) == 1 and recorder.decisions[0]["team"] == "research"
