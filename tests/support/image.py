"""The container image's sources as the tests read them: the Dockerfile's stages (parsed by
the `dockerfile` package, which wraps BuildKit's own parser) and the build context that
`.dockerignore` leaves, since no docker daemon can build the image here."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import dockerfile

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    instructions: tuple[dockerfile.Command, ...]

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> dockerfile.Command | None:
        found = self.all(cmd)
        return found[-1] if found else None


def stages(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults, and the build stages in order (unnamed ones get their index)."""
    args: dict[str, str] = {}
    out: list[Stage] = []
    current: list[dockerfile.Command] = []
    head: tuple[str, str] | None = None
    for ins in dockerfile.parse_file(str(path)):
        if ins.cmd == "FROM":
            if head is not None:
                out.append(Stage(head[0], head[1], tuple(current)))
            value = list(ins.value)
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else str(len(out))
            head, current = (name, value[0]), []
        elif head is None:
            if ins.cmd == "ARG":
                key, _, default = ins.value[0].partition("=")
                args[key] = default
        else:
            current.append(ins)
    if head is not None:
        out.append(Stage(head[0], head[1], tuple(current)))
    return args, out


def expand(text: str, args: dict[str, str]) -> str:
    """`${NAME}` / `$NAME` replaced by the ARG defaults, as `FROM` lines are."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


class DockerIgnore:
    """`.dockerignore` as Docker reads it: each pattern matches a path relative to the
    context root (`*` and `?` within one segment, `**` across any number), and a match on
    a folder excludes everything under it. Exceptions (`!pattern`) are refused, not
    half-supported: the file does not use them."""

    def __init__(self, path: Path = DOCKERIGNORE) -> None:
        self.patterns: list[re.Pattern[str]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("!"):
                raise ValueError(f"{path.name}: exceptions are not supported here: {line}")
            self.patterns.append(_glob_regex(line.strip("/")))

    def excludes(self, relpath: str) -> bool:
        parts = relpath.strip("/").split("/")
        prefixes = ("/".join(parts[: i + 1]) for i in range(len(parts)))
        return any(p.fullmatch(prefix) for prefix in prefixes for p in self.patterns)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def copy_context(dest: Path, src: Path = REPO) -> list[str]:
    """Copy what `docker build` would send from `src` to `dest`; returns the files copied."""
    ignore = DockerIgnore(src / ".dockerignore")
    copied: list[str] = []
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        rel = "" if rel_root == "." else rel_root + "/"
        # Pruned, not filtered afterwards: .venv-vllm alone holds gigabytes.
        dirs[:] = sorted(d for d in dirs if not ignore.excludes(rel + d))
        for name in sorted(files):
            if ignore.excludes(rel + name):
                continue
            target = dest / rel / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(root) / name, target)
            copied.append(rel + name)
    return copied
