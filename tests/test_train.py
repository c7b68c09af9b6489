"""Training end to end on tiny fixtures in the real layouts: outputs, determinism, DDP exactness, resume."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from harness.run_folder import load_run
from harness.data import build_splits
from harness.train import evaluate, make_loaders
from tests.fixtures import make_pets
from tests.helpers import REPO, TINY_CVAE, TINY_UNET, cli, launch, without_timings


def read(path):
    return json.loads(path.read_text())


def evaluate_run(run_dir, split: str, data_root) -> dict[str, float]:
    """A saved run evaluated in this process (no Accelerate): the reference for DDP exactness."""
    cfg, model = load_run(run_dir)
    _, _, loaders = make_loaders(cfg, build_splits(cfg, data_root))
    return evaluate(cfg, model, loaders[split])


@pytest.fixture(scope="module")
def unet_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "unet"
    cli("train", "unet-sc-up-dice", "--data-root", data_root, "--out", out, *TINY_UNET)
    return out


def test_unet_run_writes_all_outputs(unet_run, data_root):
    for name in ("config.json", "model.safetensors", "metrics.json", "samples/overlays.png",
                 "checkpoints/last/trainer_state.json"):
        assert (unet_run / name).is_file(), name
    m = read(unet_run / "metrics.json")
    assert m["experiment"] == "unet-sc-up-dice" and m["num_processes"] == 1
    assert (m["device"], m["device_name"]) == ("cpu", None)  # where it ran: gpu_check.sh reads this
    for split in ("val", "test"):
        for k in ("dice", "iou", "dice_mean", "iou_mean"):
            assert 0.0 <= m[split][k] <= 1.0
    assert m["test"]["count"] == 6  # the fixture's test list has 6 pairs
    assert len(m["history"]) == 2 and m["epochs_run"] == 2
    cfg, model = load_run(unet_run)
    assert cfg.model["down"] == "strided" and cfg.model["up"] == "upsample" and cfg.loss == "dice"
    # the saved weights reproduce the saved test metrics exactly
    assert evaluate_run(unet_run, "test", data_root)["dice"] == pytest.approx(m["test"]["dice"], abs=1e-12)
    assert Image.open(unet_run / "samples/overlays.png").size[0] == 3 * 32


def test_same_seed_same_metrics(unet_run, data_root, tmp_path):
    again = tmp_path / "again"
    cli("train", "unet-sc-up-dice", "--data-root", data_root, "--out", again, *TINY_UNET)
    assert without_timings(read(again / "metrics.json")) == without_timings(read(unet_run / "metrics.json"))


def test_compiled_and_nchw_training_saves_plain_weights(unet_run, data_root, tmp_path):
    """--compile (inductor via Accelerate) and --no-channels-last are training levers only: the saved
    weights load into a plain model and reproduce the run's metrics; the losses track the eager run."""
    out = tmp_path / "compiled"
    cli("train", "unet-sc-up-dice", "--data-root", data_root, "--out", out, *TINY_UNET, "--compile",
        "--no-channels-last")
    m, eager = read(out / "metrics.json"), read(unet_run / "metrics.json")
    cfg, _ = load_run(out)  # strict load: no torch.compile `_orig_mod.` prefixes in the file
    assert cfg.compile is True and cfg.channels_last is False
    assert evaluate_run(out, "test", data_root)["dice"] == pytest.approx(m["test"]["dice"], abs=1e-12)
    for a, b in zip(m["history"], eager["history"]):  # same seed, same batches: same losses up to kernels
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


def test_auto_precision_follows_the_hardware(monkeypatch):
    """'auto' picks bf16 only where it is native: on a CPU without AVX512-BF16/AMX, bf16 autocast is
    emulated and slower than fp32."""
    import torch

    from harness.train import resolve_precision

    for fixed in ("no", "fp16", "bf16"):
        assert resolve_precision(fixed) == fixed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import harness.hardware as hw

    monkeypatch.delenv("SEGVAE_CPU_BF16", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    for flags, capability, want in [({"avx2", "avx512_bf16"}, "AVX512", "bf16"), ({"avx2", "amx_bf16"}, "AVX512", "bf16"),
                                    ({"avx2"}, "AVX2", "no"),
                                    ({"avx2", "avx512_bf16"}, "AVX2", "no")]:  # PyTorch held to AVX2: emulated
        monkeypatch.setattr(hw, "read_cpuinfo", lambda f=flags: ("test CPU", set(f)))
        monkeypatch.setattr(hw, "torch_cpu_capability", lambda c=capability: c)
        assert resolve_precision("auto") == want, (flags, capability)
        for forced, forced_want in (("0", "no"), ("1", "bf16")):  # SEGVAE_CPU_BF16 overrides the probe
            monkeypatch.setenv("SEGVAE_CPU_BF16", forced)
            assert resolve_precision("auto") == forced_want
        monkeypatch.delenv("SEGVAE_CPU_BF16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16_gpu, want in [(True, "bf16"), (False, "fp16")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda v=bf16_gpu: v)
        assert resolve_precision("auto") == want


def test_auto_precision_run_records_what_it_used(data_root, tmp_path):
    from harness.config import get_experiment
    from harness.train import resolve_precision

    assert get_experiment("unet-mp-tr-bce").mixed_precision == "auto"  # `segvae train`'s UNet default
    out = tmp_path / "auto"
    cli("train", "unet-mp-tr-bce", "--data-root", data_root, "--out", out, *TINY_UNET, "--epochs", "1",
        "--mixed-precision", "auto")
    assert read(out / "config.json")["mixed_precision"] == "auto"  # the recipe, portable to other hosts
    m = read(out / "metrics.json")
    assert m["mixed_precision"] == resolve_precision("auto") and math.isfinite(m["test"]["dice"])


def test_cvae_run_grid_and_metrics(data_root, tmp_path):
    out = tmp_path / "cvae"
    cli("train", "cvae-mnist", "--data-root", data_root, "--out", out, *TINY_CVAE)
    m = read(out / "metrics.json")
    for k in ("elbo", "nll", "kl", "bpd"):
        assert math.isfinite(m["test"][k])
    assert m["test"]["elbo"] == pytest.approx(-(m["test"]["nll"] + m["test"]["kl"]), rel=1e-7)

    d = 28 * 28
    assert m["test"]["bpd"] == pytest.approx((-m["test"]["elbo"] + d * math.log(256)) / (d * math.log(2)), rel=1e-5)
    grid = Image.open(out / m["samples"]["grid"])
    assert grid.size == (5 * 28 + 6 * 2, 5 * 28 + 6 * 2)  # 5x5 tiles with 2 px padding
    assert len(m["samples"]["labels"]) == 25
    assert all(true != wrong for true, wrong in m["samples"]["labels"])
    assert (out / m["samples"]["figure"]).is_file()
    assert m["recon"]["mae"] >= 0


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    # odd split sizes, so 2 ranks get uneven shares and Accelerate pads one of them
    data_root = make_pets(tmp_path / "data", n_trainval=27, n_test=7)
    out = tmp_path / "ddp"
    p = launch(2, "train", "unet-mp-tr-bce", "--data-root", data_root, "--out", out, *TINY_UNET)
    assert p.returncode == 0, p.stderr[-3000:]
    m = read(out / "metrics.json")
    assert m["num_processes"] == 2
    # every sample evaluated exactly once: no padding duplicates
    cfg = load_run(out)[0]
    sizes = {k: len(v) for k, v in build_splits(cfg, data_root).items()}
    assert (m["val"]["count"], m["test"]["count"]) == (sizes["val"], sizes["test"]) == (4, 7)
    ref = evaluate_run(out, "val", data_root)
    assert m["val"]["dice"] == pytest.approx(ref["dice"], abs=1e-12)
    assert m["val"]["iou"] == pytest.approx(ref["iou"], abs=1e-12)
    ref_test = evaluate_run(out, "test", data_root)
    assert m["test"] == pytest.approx({**ref_test}, rel=1e-6)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(data_root, tmp_path):
    # 6 epochs of ~0.1 s on a fast CPU: the kill, as soon as epoch 1's checkpoint is seen, lands with
    # several epochs still to run (with 4 epochs and a 0.3 s wait first, an AVX-512 EPYC finished them all)
    args = ["train", "unet-mp-tr-bce", "--data-root", str(data_root), "--epochs", "6", "--base-channels", "4",
            "--image-size", "32", "--batch-size", "2"]
    ref = tmp_path / "ref"
    cli(*args, "--out", ref)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args, "--out", str(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and read(state)["epoch"] >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # in epoch 2, or saving its checkpoint (atomic writes: either is resumable)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    p = cli(*args, "--out", killed, "--resume")
    resumed = re.search(r"resumed from \S+ at epoch (\d+)", p.stdout + p.stderr)
    assert resumed and 1 <= int(resumed.group(1)) < 6  # it continued, not started over
    assert without_timings(read(killed / "metrics.json")) == without_timings(read(ref / "metrics.json"))
