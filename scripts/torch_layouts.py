"""PyTorch eager on one run, in fp32 and bf16 weights, each in NCHW and channels_last: which layout pays.

The four forms are the bench's own torch backend (harness.bench.backends_torch.TorchEager: BatchNorm
folded, weights converted once, 4-D inputs made channels_last) with its dtype and layout set here, all
loaded in this one process, which keeps freed memory as the bench's torch workers do
(process_env.retain_freed_memory), and timed in interleaved rounds (every form once a round, in an order
shuffled per round; each turn: warm-up calls, then calls for at least --min-seconds). A figure is the
median over rounds of the turn's median ms per batch, with its order-statistic interval
(harness.bench.stats.median_ci), as samples/s and as a share of the machine's peak for the form's
precision (the bench's matmul probe, run here first). Writes JSON with the CPU.

    python scripts/torch_layouts.py RUN --batch-size 8 --out torch-layouts.json
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.bench.backends_torch import TorchEager, example_inputs
from harness.bench.device import Device
from harness.bench.peak import probe_peak
from harness.bench.process_env import retain_freed_memory
from harness.bench.stats import median_ci
from harness.bench.trackers import flops_per_sample
from harness.hardware import cpu_has_native_bf16, machine
from harness.io import atomic_write_json
from harness.run_folder import load_run

FORMS = {  # name -> (weights dtype, channels_last)
    "fp32 NCHW": (None, False), "fp32 channels_last": (None, True),
    "bf16 NCHW": ("bf16", False), "bf16 channels_last": ("bf16", True)}


def timed_ms(run, warmup: int, min_calls: int, min_s: float) -> float:
    for _ in range(warmup):
        run()
    times, end = [], time.perf_counter() + min_s
    while len(times) < min_calls or time.perf_counter() < end:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--min-calls", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="torch-layouts.json")
    a = ap.parse_args()
    malloc = retain_freed_memory()  # as the bench's torch workers: no page faults per eager forward
    import torch

    from exports.onnx_export import graph_specs

    torch.set_num_threads(a.threads)
    run = Path(a.run_dir)
    cfg, model = load_run(run)
    inputs = example_inputs(cfg, a.batch_size)
    flops = flops_per_sample(graph_specs(cfg, model, fold_batchnorm=True)[0].module, cfg.task, inputs)
    forms = {k: v for k, v in FORMS.items() if v[0] is None or cpu_has_native_bf16()}  # emulated bf16: not timed
    print(f"[layouts] peak probe ({a.threads} threads)", flush=True)
    peak = probe_peak(a.threads)
    runs = {}
    for name, (dtype, cl) in forms.items():
        b = type(name, (TorchEager,), {"dtype_name": dtype, "channels_last": cl})()
        b.load({"run_dir": str(run), "task": cfg.task}, a.threads, Device("cpu", None))
        runs[name] = b.bind(inputs)
    rng, ms = random.Random(a.seed), {k: [] for k in runs}
    for r in range(a.rounds):
        order = list(runs)
        rng.shuffle(order)
        for name in order:
            ms[name].append(timed_ms(runs[name], 2, a.min_calls, a.min_seconds))
        print(f"[layouts] round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {ms[k][-1]:.1f} ms" for k in runs), flush=True)
    out = {"run": str(run), "experiment": cfg.name, "batch_size": a.batch_size, "threads": a.threads,
           "rounds": a.rounds, "malloc": malloc, "flops_per_sample": flops, "peak": peak, "env": machine(with_gpu=False).as_dict(),
           "forms": {}}
    for name, (dtype, cl) in forms.items():
        prec = dtype or "fp32"
        sps = [1e3 * a.batch_size / m for m in ms[name]]
        ci = median_ci(sps)
        gpk = (peak.get(prec) or {}).get("gflops_per_s")
        out["forms"][name] = {"precision": prec, "channels_last": cl, "rounds_ms": ms[name], "samples_per_s": ci,
                              "gflops_per_s": ci["median"] * flops / 1e9,
                              "pct_of_peak": ci["median"] * flops / 1e9 / gpk if gpk else None}
        print(f"{name:20s} {ci['median']:8.1f} [{ci['lo']:.1f}-{ci['hi']:.1f}] samples/s ({100 * ci['coverage']:.1f}% CI, "
              f"{ci['n']} rounds)" + (f", {100 * out['forms'][name]['pct_of_peak']:.1f}% of the {prec} peak" if gpk else ""))
    atomic_write_json(Path(a.out), out)
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
