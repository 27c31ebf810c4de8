#!/usr/bin/env bash
# The run command: install if needed, then serve the demo config on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/turnout serve --config "${TURNOUT_CONFIG:-config/turnout.yaml}" "$@"
