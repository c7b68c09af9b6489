#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py says what it does): about 3-6 minutes on one GPU,
# no network needed. Writes OUTDIR/summary.json and OUTDIR/gpu_check.log whatever happens.
#
#   PYTHON=python3 bash scripts/gpu_check.sh OUTDIR [--require-cuda] [--install] [--data-root D]
#
# PYTHON: an interpreter that already has torch (default: .venv/bin/python when it exists, else
# python3); the project is imported from this checkout, nothing is installed unless --install (or
# GPU_CHECK_INSTALL=1). Without CUDA it exits 0 with "no CUDA", or 2 with --require-cuda
# (GPU_CHECK_REQUIRE_CUDA=1).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
