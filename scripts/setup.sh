#!/usr/bin/env bash
# Create .venv and install the project with its test extra. Idempotent; safe to rerun.
# torch/torchvision are pinned to the releases this project is tested with (on this kind of
# machine pip takes them from local disk; elsewhere from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch's CUDA build takes about 5.5 GB in the venv. A full disk otherwise fails deep inside pip
# ("[Errno 28] No space left on device") after minutes, so check first and say what is needed.
NEED_GB=${SEGVAE_SETUP_MIN_FREE_GB:-8}
# Skipped when the pinned torch is already in .venv (a file test: importing torch costs seconds per rerun).
if ! compgen -G ".venv/lib/python*/site-packages/torch-2.14.1*.dist-info" >/dev/null; then
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "$free_kb" -lt $((NEED_GB * 1024 * 1024)) ]; then
    echo "setup.sh: only $((free_kb / 1024)) MB free on the disk holding $(pwd)/.venv;" \
         "installing torch and torchvision needs about ${NEED_GB} GB (SEGVAE_SETUP_MIN_FREE_GB changes this check)" >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
echo "environment ready: $(pwd)/.venv"
# The report's browser check needs a system Chromium; setup installs nothing outside .venv, so it only says so.
if ! { command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null \
   || ! command -v chromedriver >/dev/null; then
  echo "note: no chromium + chromedriver on PATH: pytest skips the report's browser check (tests/test_report_browser.py);" \
       "to run it: sudo apt-get install -y chromium chromium-driver"
fi
