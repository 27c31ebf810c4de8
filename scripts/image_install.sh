#!/usr/bin/env bash
# Install Turnout the way the container image does: the Dockerfile's build stage runs
# this very script, and tests/e2e/test_image_install.py runs it against a clean venv,
# so what the test checks is what the image holds.
#
#   scripts/image_install.sh VENV [SRC]
#
# Builds a wheel from the source tree SRC (default: this repository) and installs it,
# with its runtime dependencies only (no dev extras, not editable), into a new
# virtualenv VENV made by $PYTHON (default python3). pip's cache is used as it is set up:
# the Dockerfile mounts a BuildKit cache there, the test reuses the developer's.
set -euo pipefail

venv=${1:?usage: scripts/image_install.sh VENV [SRC]}
src=${2:-$(cd "$(dirname "$0")/.." && pwd)}
py=${PYTHON:-python3}

if [ -e "$venv" ]; then
  echo "image_install.sh: $venv already exists: the install is meant for a clean venv" >&2
  exit 1
fi
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT

"$py" -m venv "$venv"
# A wheel rather than `pip install SRC`: the image gets exactly what a release would
# ship (packages and package data as pyproject.toml declares them), nothing that only
# happens to lie in the source tree.
"$venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$src"
"$venv/bin/python" -m pip install --quiet "$wheels"/turnout-*.whl
# Nothing installs anything at run time: pip and setuptools stay out of the image.
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools
"$venv/bin/turnout" --help >/dev/null
echo "image_install.sh: turnout installed in $venv"
