#!/usr/bin/env bash
# The one test command: install everything, lint, type-check, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
echo "==> preparing real vLLM on the CPU (venv .venv-vllm and a tiny model; reused when present)"
.venv/bin/python -m selfhost.vllm_cpu setup
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
