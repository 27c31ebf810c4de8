#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv). Idempotent and quick when nothing
# changed: the install is redone only when pyproject.toml or constraints.txt changes.
# Every package is pinned by constraints.txt (scripts/lock.sh regenerates it).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "==> installing turnout and its dev tools into $VENV (about a minute; pip log: $VENV/pip.log)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >"$VENV/pip.log" 2>&1
  # One line per package as pip collects it, so a first run is not silent.
  if ! "$VENV/bin/python" -m pip install --progress-bar off -c constraints.txt -e ".[dev]" 2>&1 \
      | tee -a "$VENV/pip.log" \
      | awk '/^Collecting /{n++; printf "    [%3d] %s\n", n, $2; fflush()}'; then
    tail -30 "$VENV/pip.log"; exit 1
  fi
  echo "==> installed"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi

# System tools the tests use: redis-server (each test run starts its own on a free
# port), wrk (the benchmark's load generator, run by its smoke test) and chromium (the
# console's browser tests drive it through Playwright: /usr/bin/chromium).
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
if [ -n "$missing" ]; then
  echo "==> installing$missing"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null
fi
