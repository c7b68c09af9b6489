"""Helpers shared by tests: run the CLI in a subprocess, tiny configs, metrics without timings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"train_seconds", "seconds_per_epoch", "train_samples_per_s", "seconds", "data_wait_seconds",
               "data_wait_fraction"}


def in_ci() -> bool:
    """CI sets CI=true (GitHub Actions, GitLab, .ci/run): there a missing tool is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_unless_ci(reason: str) -> None:
    """Skip with `reason` on a developer's machine; under CI=true fail with it, so that CI never
    passes by silently running less."""
    if in_ci():
        pytest.fail(f"CI=true, so this check must run: {reason}", pytrace=False)
    pytest.skip(reason)


def cli(*args, env=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    """`python -m harness ARGS` with W&B kept offline and the repo importable."""
    e = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "PYTHONPATH": str(REPO)}
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                       env=e, cwd=REPO, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"segvae {args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def launch(nproc: int, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Real multi-process gloo DDP on the CPU (ACCELERATE_USE_CPU=1 + --multi_gpu, not --cpu)."""
    e = {**os.environ, "ACCELERATE_USE_CPU": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO),
         "OMP_NUM_THREADS": "1"}
    e.update(env or {})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", "-m", "harness", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=REPO, timeout=timeout)


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


# fp32 pinned: the tests compare runs exactly, which must not hang on the host's bf16 support ("auto")
TINY_UNET = ["--epochs", "2", "--base-channels", "4", "--image-size", "32", "--batch-size", "4",
             "--mixed-precision", "no"]
TINY_CVAE = ["--epochs", "1", "--base-channels", "4", "--batch-size", "32"]
