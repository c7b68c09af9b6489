"""What dominates inference: torch.profiler for PyTorch eager (fp32, bf16) and ORT's profiler for
the exported graphs (fp32, int8) of one trained run. Prints the top ops by self time for each.

    python scripts/profile_inference.py RUN_DIR [--batch-size 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from harness.run_folder import load_run


def torch_top(model, x, bf16: bool, reps: int, top: int):
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [(e.key, 100 * e.self_cpu_time_total / total) for e in events[:top]]


def ort_top(path: Path, x: np.ndarray, threads: int, reps: int, top: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(3 + reps):
            sess.run(None, {"image": x})
        trace = json.load(open(sess.end_profiling()))
    per_op = defaultdict(float)
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_op[ev["args"].get("op_name", "?")] += ev["dur"]
    total = sum(per_op.values())
    return [(k, 100 * v / total) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--top", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, model = load_run(a.run_dir)
    if cfg.task != "segmentation":
        raise SystemExit("profile_inference.py profiles UNet runs")
    x = torch.randn(a.batch_size, 3, cfg.image_size, cfg.image_size)
    report = {"torch eager fp32": torch_top(model, x, False, a.reps, a.top),
              "torch bf16 autocast": torch_top(model, x, True, a.reps, a.top)}
    for name in ("model.onnx", "model.int8.onnx"):
        path = Path(a.run_dir) / "onnx" / name
        if path.is_file():
            report[f"ORT {name}"] = ort_top(path, x.numpy(), a.threads, a.reps, a.top)
    for backend, rows in report.items():
        print(f"{backend}: " + ", ".join(f"{op} {pct:.0f}%" for op, pct in rows))


if __name__ == "__main__":
    main()
