"""What `segvae profile`'s method choices rest on, measured on this machine (issue 26).

    python scripts/profile_overhead.py RUN [--batch-size 8] [--threads 2] [--blocks 4] [--calls 20] [--out FILE.json]

1. torch eager: the cost of timing every module. Per block, the median ms of `calls` plain forwards,
   of the same forwards under torch.profiler with a record_function range per module (the method
   `segvae profile` used until session 4), and with a perf_counter_ns clock in global forward hooks
   (harness.profile.torch_layers, the method now). Each as a ratio to the plain median of its block;
   the hooks' sum also to the plain calls torch_layers alternates with them (what the profile reports).
2. ONNX Runtime: one session's spinning threads slowing the next. Median ms of the fp32 graph's bench
   session run alone, and of the same session right after another session on the same graph ran,
   with no pause (blocks of 1 and 4 runs) and after a pause of 5 ms, 50 ms and SPIN_SETTLE_S.
Writes JSON with every block's figures and the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from exports.onnx_export import graph_specs
from exports.session import OrtSession
from harness.bench.backend_base import INPUT_NAMES
from harness.bench.backends import example_inputs
from harness.hardware import machine
from harness.io import atomic_write_json
from harness.bench.process_env import SPIN_SETTLE_S
from harness.profile import TOP_LEVEL, torch_layers
from harness.run_folder import load_run, onnx_path


def median_ms(fn, calls: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def torch_profiler_ms(net, forward, calls: int) -> float:
    """Median ms of a forward under torch.profiler with a record_function range per module."""
    from torch.profiler import ProfilerActivity, profile, record_function

    ranges: dict = {}
    handles = []
    for name, mod in net.named_modules():
        def pre(m, a, label=f"module::{name or TOP_LEVEL}"):
            ranges.setdefault(id(m), []).append(record_function(label).__enter__())

        def post(m, a, out):
            ranges[id(m)].pop().__exit__(None, None, None)
        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with profile(activities=[ProfilerActivity.CPU]):
            return median_ms(forward, calls)
    finally:
        for h in handles:
            h.remove()


def torch_block(net, args, calls: int) -> dict:
    def forward():
        net(*args)
    with torch.inference_mode():
        plain = median_ms(forward, calls)
        old = torch_profiler_ms(net, forward, calls)
        layers, beside = torch_layers(net, forward, calls)
    hooks, beside = sum(layers.values()), statistics.median(beside)
    return {"plain_ms": plain, "torch_profiler_ms": old, "hooks_sum_ms": hooks, "plain_beside_hooks_ms": beside,
            "torch_profiler_vs_plain": old / plain, "hooks_vs_plain": hooks / plain,
            "hooks_vs_plain_beside": hooks / beside}


def ort_block(path, feed: dict, threads: int, calls: int) -> dict:
    bench = OrtSession(path, threads=threads, device="cpu", spinning=True)
    other = OrtSession(path, threads=threads, device="cpu", spinning=True)

    def run(s):
        return lambda: s.run_unchecked(feed)
    out = {"alone_ms": median_ms(run(bench), calls)}
    for block in (1, 4):  # the two sessions take turns with no pause; the bench session's runs timed
        times = []
        for _ in range(calls // block):
            for _ in range(block):
                other.run_unchecked(feed)
            for _ in range(block):
                t0 = time.perf_counter()
                bench.run_unchecked(feed)
                times.append(time.perf_counter() - t0)
        out[f"after_other_no_pause_block{block}_ms"] = 1e3 * statistics.median(times)
    for pause in (0.005, 0.05, SPIN_SETTLE_S):
        times = []
        for _ in range(calls // 4):
            for _ in range(4):
                other.run_unchecked(feed)
            time.sleep(pause)
            bench.run_unchecked(feed)  # the first run after the pause, then three more
            for _ in range(3):
                t0 = time.perf_counter()
                bench.run_unchecked(feed)
                times.append(time.perf_counter() - t0)
        out[f"after_other_pause_{pause:g}s_ms"] = 1e3 * statistics.median(times)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default="profile-overhead.json")
    a = ap.parse_args()
    run = Path(a.run_dir)
    torch.set_num_threads(a.threads)
    cfg, model = load_run(run)
    net = graph_specs(cfg, model, fold_batchnorm=True)[0].module.eval()
    inputs = example_inputs(cfg, a.batch_size)
    args = [torch.from_numpy(inputs[k]) for k in INPUT_NAMES[cfg.task]]
    feed = {k: inputs[k] for k in INPUT_NAMES[cfg.task]}
    host = machine(with_gpu=False)
    doc = {"run": run.name, "batch_size": a.batch_size, "threads": a.threads, "calls": a.calls,
           "modules": sum(1 for _ in net.named_modules()), "cpu": {"model": host.cpu_model, "flags": host.cpu_flags},
           "torch": [], "ort_fp32": []}
    for b in range(a.blocks):
        doc["torch"].append(torch_block(net, args, a.calls))
        doc["ort_fp32"].append(ort_block(onnx_path(run, cfg.task, "fp32"), feed, a.threads, a.calls))
        print(f"block {b + 1}/{a.blocks}: torch {json.dumps({k: round(v, 3) for k, v in doc['torch'][-1].items()})}\n"
              f"  ort {json.dumps({k: round(v, 3) for k, v in doc['ort_fp32'][-1].items()})}", flush=True)
    atomic_write_json(Path(a.out), doc)
    print(f"CPU {host.cpu_model} flags {host.cpu_flags}; written {a.out}")


if __name__ == "__main__":
    main()
