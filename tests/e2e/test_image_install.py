"""The container image, short of Docker: its build context (what .dockerignore leaves) goes
through the build stage's own install script into a clean venv, and that venv runs the
image's command line and HEALTHCHECK against the demo config mounted where the image
expects it. Only the base image and the daemon are missing (neither can be had here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.image import REPO, copy_context, stages
from tests.support.procs import free_port, stop, tail, wait_http

DEMO_KEY = "tk-demo-local-only-not-a-secret"  # the demo config's default for $TURNOUT_DEMO_KEY
INSTALL_TIMEOUT_S = 300  # about 20 s with pip's cache warm, a few minutes cold


def _clean_env() -> dict[str, str]:
    """The environment of a fresh container: nothing from the developer's venv or keys."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR", "TURNOUT_CONFIG",
            "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TURNOUT_ADMIN_KEY", "TURNOUT_DEMO_KEY"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _image_argv(venv: Path, config: Path, port: int) -> list[str]:
    """ENTRYPOINT + CMD from the Dockerfile, pointed at this venv, config and port; on
    loopback rather than 0.0.0.0 (tests serve nothing beyond this machine)."""
    _, found = stages()
    final = found[-1]
    entry, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entry is not None and cmd is not None
    swaps = {"turnout": str(venv / "bin" / "turnout"), "/etc/turnout/turnout.yaml": str(config),
             "0.0.0.0": "127.0.0.1", "8080": str(port)}
    argv = [swaps.get(a, a) for a in [*entry.value, *cmd.value]]
    assert all(str(v) in argv for v in swaps.values()), argv  # each one was there to swap
    return argv


def _healthcheck_argv(venv: Path, port: int) -> list[str]:
    _, found = stages()
    check = found[-1].last("HEALTHCHECK")
    assert check is not None and check.value[0] == "CMD" and check.value[1] == "python"
    return [str(venv / "bin" / "python"),
            *(a.replace(":8080/", f":{port}/") for a in check.value[2:])]


def test_image_install_serves_the_demo_config(tmp_path: Path) -> None:
    context, venv = tmp_path / "src", tmp_path / "opt" / "venv"
    files = copy_context(context)
    assert "pyproject.toml" in files and "scripts/image_install.sh" in files
    assert not any(f.startswith(("tests/", ".git/", ".venv")) for f in files)

    started = time.monotonic()
    done = subprocess.run([str(context / "scripts" / "image_install.sh"), str(venv)],
                          cwd=context, env={**_clean_env(), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"image install: {time.monotonic() - started:.1f}s, {len(files)} context files")

    # The package came from the wheel (Lua scripts included), without dev extras or pip.
    probe = ("import gateway, importlib.util as u, importlib.resources as r;"
             "print(gateway.__file__);"
             "print(r.files('gateway.store').joinpath('lua', 'admit.lua').is_file());"
             "print([m for m in ('pytest', 'ruff', 'openai', 'pip') if u.find_spec(m)])")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path,
                           env=_clean_env(), capture_output=True, text=True, check=True)
    assert where.stdout.split("\n")[:3] == [
        str(venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
            / "site-packages" / "gateway" / "__init__.py"), "True", "[]"], where.stdout

    # The demo config, mounted read-only where the image looks for it.
    config = tmp_path / "etc" / "turnout" / "turnout.yaml"
    config.parent.mkdir(parents=True)
    config.write_text((REPO / "config" / "turnout.yaml").read_text())
    config.chmod(0o444)
    checked = subprocess.run([str(venv / "bin" / "turnout"), "check-config", str(config)],
                             cwd=tmp_path, env=_clean_env(), capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0 and ": ok (" in checked.stdout, checked.stderr

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(_image_argv(venv, config, port), cwd=tmp_path,
                                env=_clean_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, log, timeout=60)
        health = subprocess.run(_healthcheck_argv(venv, port), capture_output=True, text=True,
                                timeout=10, check=False)
        assert health.returncode == 0, health.stderr

        body = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hello!"}]}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
            headers={"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            answer = json.loads(resp.read())
        assert answer["choices"][0]["message"]["content"], answer
        assert answer["usage"]["completion_tokens"] > 0
    except BaseException:
        print(tail(log))
        raise
    finally:
        stop(proc)
    # The HEALTHCHECK fails once nothing answers: it checks, it does not just exit 0.
    down = subprocess.run(_healthcheck_argv(venv, port), capture_output=True, timeout=10,
                          check=False)
    assert down.returncode != 0
