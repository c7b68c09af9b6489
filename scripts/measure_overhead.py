"""Harness overhead: `harness.train` vs a bare PyTorch loop doing the same optimizer steps.

Both train the same UNet on the same preloaded data (same batches, same augmentation code, same
layout and precision); only the wrapping differs (Accelerate, progress bar, NaN checks, logging,
checkpoints excluded: the harness times its epochs without evaluation or checkpointing).
Prints seconds per epoch for each, their ratio, and the harness's data-wait share. The two are
interleaved (bare, harness, bare, harness, ... `--rounds` times) so that a slow phase of the
machine hits both; the first epoch of every run is a warm-up and is left out of the medians.

    python scripts/measure_overhead.py --data-root ../shared/data --epochs 3 --rounds 2 [--mixed-precision bf16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from harness.config import get_experiment
from harness.data import build_splits
from harness.train import make_loaders, param_groups, to_layout, train, train_loss
from models import build_model


def bare_loop(cfg, data_root, epochs: int) -> list[float]:
    torch.manual_seed(cfg.seed)
    splits = build_splits(cfg, data_root)
    loader, sampler, _ = make_loaders(cfg, splits)
    model = build_model(cfg.task, cfg.model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(cfg, model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    times = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        for batch in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                loss = train_loss(cfg, model, [to_layout(cfg, batch[0]), batch[1]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="unet-mp-tr-bce")
    ap.add_argument("--data-root")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--mixed-precision", default="no")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    cfg = get_experiment(a.experiment).replace(epochs=a.epochs, mixed_precision=a.mixed_precision,
                                                schedule="constant")
    bare, harness, waits = [], [], []
    for _ in range(a.rounds):
        bare += bare_loop(cfg, a.data_root, a.epochs)[1:]
        with tempfile.TemporaryDirectory() as out:
            m = train(cfg, out, data_root=a.data_root)
        harness += [h["seconds"] for h in m["history"]][1:]
        waits.append(m["data_wait_fraction"])
    b, h = statistics.median(bare), statistics.median(harness)
    print(json.dumps({"experiment": cfg.name, "mixed_precision": cfg.mixed_precision, "epochs": a.epochs,
                      "rounds": a.rounds, "bare_s_per_epoch": bare, "harness_s_per_epoch": harness,
                      "overhead_pct": 100 * (h / b - 1), "data_wait_fraction": max(waits)}, indent=1))


if __name__ == "__main__":
    main()
