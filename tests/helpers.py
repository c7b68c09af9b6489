"""Helpers shared by tests: run the CLI in a subprocess, tiny configs and run folders, metrics without
timings, skips that fail under CI."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.config import get_experiment
from harness.run_folder import record_run, save_config, save_weights
from models import build_model

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


def tiny_config(name: str, channels: int = 4, image_size: int = 32):
    """The registry's experiment `name` shrunk for tests: `channels` base channels, UNets at `image_size` px."""
    cfg = get_experiment(name).with_base_channels(channels)
    return cfg.replace(image_size=image_size) if cfg.task == "segmentation" else cfg


def make_run(run_dir: Path, cfg, *, seed: int = 0, centre_on: torch.Tensor | None = None,
             random_batchnorm: bool = False, record: bool = False) -> Path:
    """A run folder as `segvae train` leaves it (config.json, model.safetensors), from a random-init model.

    A UNet's head is centred so that about half the pixels of `centre_on` (default: 4 random images)
    read "pet": Dice is then informative. `random_batchnorm` gives BatchNorm non-trivial running
    statistics, so that eval-mode BN (and its folding) is really exercised. `record` writes run.json
    with no data root (the embedded sample, which export then calibrates on)."""
    torch.manual_seed(seed)
    model = build_model(cfg.task, cfg.model)
    with torch.no_grad():
        if random_batchnorm:
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        if cfg.task == "segmentation":
            if centre_on is None:
                size = cfg.image_size
                centre_on = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
            model.head.bias -= model.eval()(centre_on).median()
    save_config(run_dir, cfg)
    if record:
        record_run(run_dir, cfg, None, argv=None)
    save_weights(run_dir, model.eval())
    return run_dir


def exported_tiny_runs(root: Path, data_root) -> dict[str, Path]:
    """The bench tests' runs: a 4-channel UNet (32 px, its head centred on two fixture test images, so
    Dice is not 0) and MNIST CVAE, both exported with int8 (calibrated on 8 images)."""
    from harness.data import build_splits
    from harness.export_stage import export_run

    unet_cfg, cvae_cfg = tiny_config("unet-mp-tr-bce"), tiny_config("cvae-mnist")
    centre = torch.stack([build_splits(unet_cfg, data_root)["test"][i][0] for i in range(2)])
    runs = {"unet": make_run(root / "tiny-unet", unet_cfg, seed=unet_cfg.seed, centre_on=centre),
            "cvae": make_run(root / "tiny-cvae", cvae_cfg, seed=cvae_cfg.seed)}
    for r in runs.values():  # the bench never exports: both runs are exported first
        export_run(r, quantize="int8", data_root=data_root, calib_count=8)
    return runs


def wandb_records(path: Path):
    """Protobuf records of a W&B offline .wandb file (a leveldb-style log: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B", data[:8]
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:  # block padding
            pos += left - 7
            continue
        buf += data[pos:pos + n]
        pos += n
        if kind in (1, 4):  # FULL or LAST chunk
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            yield r
