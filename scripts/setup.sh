#!/usr/bin/env bash
# Create .venv and install the project with its test extra. Idempotent; safe to rerun.
# torch/torchvision are pinned to the releases this project is tested with (on this kind of
# machine pip takes them from local disk; elsewhere from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
echo "environment ready: $(pwd)/.venv"
