"""The layout's rules (issue #15, README "Architecture"), checked on the tracked source of
the service's four packages: gateway/, adapters/, policies/ and selfhost/.

- nothing in them imports the benchmark harness (`bench`), not even lazily;
- no module is over 500 lines;
- `adapters` and `policies` import nothing of `gateway` but its leaf, `gateway.canonical`;
- gateway/ never compares a dialect name (quirks are the adapter's `Capabilities`);
- no name is a module or folder in two of the packages (`gateway/routing.py` beside
  `policies/routing/`, `gateway/http/openai.py` beside `adapters/openai.py`), save the
  interfaces (`base.py`) and gateway/config/'s modules, named after the config section
  they read.
"""

from __future__ import annotations

import ast
import subprocess
from collections import defaultdict
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "adapters", "policies", "selfhost")
MAX_LINES = 500


def tracked(*folders: str) -> list[PurePosixPath]:
    out = subprocess.run(["git", "ls-files", "--", *folders], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return [PurePosixPath(p) for p in out.splitlines()
            if p.endswith(".py") and (REPO / p).exists()]  # deleted, not yet staged: gone


SOURCES = tracked(*PACKAGES)


def parsed(path: PurePosixPath) -> ast.Module:
    return ast.parse((REPO / path).read_text(), str(path))


def imported(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) for every import anywhere in the module (functions included);
    relative imports are left out (none of ours reach outside their package)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_the_packages_are_found() -> None:
    assert {p.parts[0] for p in SOURCES} == set(PACKAGES)
    assert PurePosixPath("gateway/pipeline.py") in SOURCES


def test_nothing_imports_the_benchmark_harness() -> None:
    offenders = [f"{path}:{line}: {module}" for path in SOURCES
                 for line, module in imported(parsed(path))
                 if module == "bench" or module.startswith("bench.")]
    assert not offenders, "the service imports bench/: " + ", ".join(offenders)


def test_the_import_check_sees_a_lazy_import() -> None:
    tree = ast.parse("import os\ndef replay():\n    from bench.replay import main\n"
                     "    import bench\n")
    assert imported(tree) == [(1, "os"), (3, "bench.replay"), (4, "bench")]


def test_no_module_is_over_500_lines() -> None:
    lengths = {path: len((REPO / path).read_text().splitlines()) for path in SOURCES}
    over = {str(path): n for path, n in lengths.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them): {over}"


def test_adapters_and_policies_import_only_the_canonical_types_from_gateway() -> None:
    offenders = [f"{path}:{line}: {module}" for path in tracked("adapters", "policies")
                 for line, module in imported(parsed(path))
                 if (module == "gateway" or module.startswith("gateway."))
                 and module != "gateway.canonical"]
    assert not offenders, "dependencies point gateway → adapters/policies: " + ", ".join(
        offenders)


def _names_dialect(node: ast.expr) -> bool:
    """`x.dialect` or `dialect`, alone or in a literal tuple, list or set."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_dialect(element) for element in node.elts)
    return ((isinstance(node, ast.Attribute) and node.attr == "dialect")
            or (isinstance(node, ast.Name) and node.id == "dialect"))


def dialect_comparisons(tree: ast.Module) -> list[int]:
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and any(_names_dialect(side) for side in (node.left, *node.comparators))]


def test_gateway_never_compares_a_dialect_name() -> None:
    offenders = [f"{path}:{line}" for path in tracked("gateway")
                 for line in dialect_comparisons(parsed(path))]
    assert not offenders, ("gateway/ tests a dialect name (make it an adapter capability): "
                           + ", ".join(offenders))


def test_the_dialect_check_sees_a_comparison() -> None:
    caught = ast.parse("if dep.dialect == 'anthropic':\n    pass\n"
                       "ok = 'x' in (dialect, 'y')\n"
                       "fine = adapter.capabilities.prefill\n")
    assert dialect_comparisons(caught) == [1, 3]


def clashes(paths: list[PurePosixPath]) -> dict[str, list[str]]:
    """Each module stem or folder name used in more than one package, with its uses."""
    uses: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        if path.name == "base.py" or path.parts[:2] == ("gateway", "config"):
            continue
        if path.stem != "__init__":
            uses[path.stem].add(str(path))
        for depth in range(1, len(path.parts) - 1):
            uses[path.parts[depth]].add("/".join(path.parts[:depth + 1]) + "/")
    return {name: sorted(where) for name, where in uses.items()
            if len({w.split("/")[0] for w in where}) > 1}


def test_no_name_is_used_in_two_packages() -> None:
    assert not clashes(SOURCES), "one name per concept across the packages"


@pytest.mark.parametrize(("paths", "name"), [
    (["gateway/routing.py", "policies/routing/slo_cost.py"], "routing"),
    (["gateway/http/openai.py", "adapters/openai.py"], "openai"),
    (["gateway/telemetry/spans.py", "policies/telemetry.py"], "telemetry"),
])
def test_the_clash_check_sees_a_clash(paths: list[str], name: str) -> None:
    assert list(clashes([PurePosixPath(p) for p in paths])) == [name]
