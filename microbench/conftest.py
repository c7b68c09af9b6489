"""pytest-benchmark suite (kept out of the default `pytest` run: testpaths is `tests`).

    pytest microbench --benchmark-json=out.json          # run and save
    pytest microbench --benchmark-only -k "ort and unet"  # a subset

Models are random-init and tiny (UNet base 8 at 64 px, CVAE-MNIST hidden 8), so the suite is quick
and tracks regressions of the inference/training code paths; `segvae bench` is the measurement of
trained runs (isolated processes, accuracy, percent of peak). Here every backend runs inside the
pytest process at torch's default thread count.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import make_run, tiny_config

MODELS = {
    "unet": lambda: tiny_config("unet-mp-tr-bce", channels=8, image_size=64),
    "cvae": lambda: tiny_config("cvae-mnist", channels=8),
}


@pytest.fixture(scope="session")
def bench_runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs, exported to ONNX (fp32 + int8) with exports.onnx_export on the embedded sample."""
    from harness.export_stage import export_run

    os.environ.setdefault("SEGVAE_CACHE_DIR", str(tmp_path_factory.mktemp("segvae-cache")))
    root = tmp_path_factory.mktemp("bench-runs")
    runs = {}
    for name, make in MODELS.items():
        run = make_run(root / name, make(), record=True)  # run.json: export calibrates on the embedded sample
        export_run(run, quantize="int8", calib_count=16)
        runs[name] = run
    return runs
