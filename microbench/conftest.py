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
import torch

from harness.run_folder import record_run, save_config, save_weights
from harness.config import get_experiment
from models import build_model

MODELS = {
    "unet": lambda: get_experiment("unet-mp-tr-bce").with_base_channels(8).replace(image_size=64),
    "cvae": lambda: get_experiment("cvae-mnist").with_base_channels(8),
}


def _make_run(run_dir: Path, cfg) -> Path:
    torch.manual_seed(0)
    save_config(run_dir, cfg)
    record_run(run_dir, cfg, None, argv=None)  # the embedded sample: what export calibrates on
    save_weights(run_dir, build_model(cfg.task, cfg.model).eval())
    return run_dir


@pytest.fixture(scope="session")
def bench_runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs, exported to ONNX (fp32 + int8) with exports.onnx_export on the embedded sample."""
    from harness.export_stage import export_run

    os.environ.setdefault("SEGVAE_CACHE_DIR", str(tmp_path_factory.mktemp("segvae-cache")))
    root = tmp_path_factory.mktemp("bench-runs")
    runs = {}
    for name, make in MODELS.items():
        run = _make_run(root / name, make())
        export_run(run, quantize="int8", calib_count=16)
        runs[name] = run
    return runs
