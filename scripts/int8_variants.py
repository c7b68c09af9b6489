"""Which int8 settings and ONNX Runtime session options pay on this CPU: each variant of a run's graph
timed in interleaved rounds (every variant once per round, so a host that drifts moves them all),
with the int8 graph's error against fp32 beside it.

    python scripts/int8_variants.py RUN [--batch-size 8] [--threads 2] [--rounds 12] [--out FILE.json]

Variants (exports.quantize.QuantOptions and OrtSession settings; the baseline is `segvae export
--quantize int8`'s recipe on this CPU: QDQ, U8S8, per-channel, every op type ORT quantizes, 7-bit
weights where VNNI is absent):
  int8 recipe variants: per-tensor weights, the other weight range (7 or 8 bits), S8S8, Conv/Gemm/MatMul only
  (no int8 Mul/Add/Sigmoid/Concat: fewer Q/DQ hops), no ConvTranspose (its weights are not
  dequantized on every run), QOperator-free fusions as ORT does them;
  session variants on the baseline int8 graph and on fp32: opt level "extended" (no NCHWc layout),
  denormals as zero. Each timed block starts after a pause (harness.profile.SPIN_SETTLE_S), so the
  previous variant's spinning threads have let go of the cores.
Calibration: the run's training images (as `segvae export`), `--calib-count` of them. Prints a table
(median ms per batch over rounds, [min-max of the round medians], vs the baseline) and writes JSON.
A figure is publishable only from a quiet machine (the lead runs this; see docs/results/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from exports.onnx_export import graph_specs
from exports.quantize import QuantOptions, quantize_int8
from exports.session import OrtSession
from harness.bench.backend_base import INPUT_NAMES
from harness.export_data import ExportData, inputs_for
from harness.bench.process_env import SPIN_SETTLE_S
from harness.run_folder import data_root_for, load_run, onnx_path

def recipes(reduce_range: bool) -> dict[str, QuantOptions]:
    """The export's recipe on this CPU (7-bit weights where VNNI is absent: harness.export_stage.int8_isa)
    and its variants, each one knob away."""
    base = QuantOptions(reduce_range=reduce_range)
    return {
        "int8 (export recipe)": base,
        "int8 per-tensor": replace(base, per_channel=False),
        "int8 full 8-bit weights" if reduce_range else "int8 reduce_range": replace(base, reduce_range=not reduce_range),
        "int8 S8S8": replace(base, activations="QInt8"),
        "int8 Conv/Gemm/MatMul only": replace(base, op_types=("Conv", "Gemm", "MatMul")),
        "int8 without ConvTranspose": replace(base, op_types=("Conv", "Gemm", "MatMul", "Add", "Mul", "Sigmoid",
                                                              "Concat", "MaxPool", "Relu", "Resize", "Split",
                                                              "Reshape", "Transpose", "Unsqueeze", "Gather",
                                                              "DepthToSpace", "Clip", "Expand")),
    }


SESSIONS = {  # name -> OrtSession keywords + extra config entries
    "opt extended (no NCHWc)": ({"graph_optimization": "extended"}, {}),
    "denormals as zero": ({}, {"session.set_denormal_as_zero": "1"}),
}


def timed(sess: OrtSession, feed: dict, min_runs: int, min_s: float) -> float:
    time.sleep(SPIN_SETTLE_S)  # the previous variant's spinning threads let go of the cores first
    for _ in range(2):
        sess.run_unchecked(feed)
    times, t_end = [], time.perf_counter() + min_s
    while len(times) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run_unchecked(feed)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def session(path, threads: int, kw: dict, entries: dict) -> OrtSession:
    s = OrtSession(path, threads=threads, device="cpu", spinning=True, **kw)
    if entries:  # config entries must be set before the session is built: rebuild with them
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        for k, v in entries.items():
            so.add_session_config_entry(k, v)
        s._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--min-runs", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=0.3)
    ap.add_argument("--data-root")
    ap.add_argument("--out", default="int8-variants.json")
    ap.add_argument("--int8-up4", choices=["conv3x3", "conv2x2"], default="conv3x3",
                    help="CVAE: the form of the decoder's ConvTranspose2d(4, 2, 1) in the quantized graph (as export)")
    a = ap.parse_args()
    run = Path(a.run_dir)
    cfg, model = load_run(run)
    fp32 = onnx_path(run, cfg.task, "fp32")
    data = ExportData(cfg, data_root_for(run, a.data_root, "int8_variants"))
    # the export quantizes the rewritten form (ConvTranspose as Conv + DepthToSpace): rebuild it for the recipes
    from exports.onnx_export import build_metadata, export_graph
    from harness.export_data import dataset_info
    spec = graph_specs(cfg, model, pixel_shuffle_up=True, convtranspose4=a.int8_up4)[0]
    example, _ = inputs_for(cfg, spec.kind, data, 2, split="train", seed=3)
    source = Path(tempfile.mkdtemp(prefix="int8-variants-")) / "source.onnx"
    export_graph(spec, tuple(example[n] for n in spec.input_names), source, build_metadata(cfg, spec, dataset_info(cfg)))
    kind = graph_specs(cfg, model)[0].kind
    calib, src = inputs_for(cfg, kind, data, a.calib_count, split="train", seed=1)
    batches = [{k: v[i:i + 16].numpy() for k, v in calib.items()} for i in range(0, a.calib_count, 16)]
    test, _ = inputs_for(cfg, kind, data, a.batch_size, split="val", seed=2)
    feed = {k: np.ascontiguousarray(test[k].numpy()) for k in INPUT_NAMES[cfg.task]}
    work = Path(tempfile.mkdtemp(prefix="int8-variants-"))
    graphs = {"fp32": fp32}
    notes = {}
    from harness.export_stage import int8_isa
    from harness.hardware import machine
    isa = int8_isa(machine(with_gpu=False))
    for name, opts in recipes(isa["reduce_range"]).items():
        path = work / (name.replace(" ", "_").replace("/", "-") + ".onnx")
        q = quantize_int8(source, path, batches, options=opts)
        graphs[name] = path
        notes[name] = {"settings": q.settings, "fp32_ops": q.fp32_ops}
    ref = OrtSession(fp32, threads=a.threads, device="cpu").run_unchecked(feed)[0]
    sessions, errors = {}, {}
    for name, path in graphs.items():
        sessions[name] = session(path, a.threads, {}, {})
        errors[name] = float(np.abs(sessions[name].run_unchecked(feed)[0] - ref).mean())
    for sname, (kw, entries) in SESSIONS.items():
        for g in ("fp32", "int8 (export recipe)"):
            sessions[f"{g}, {sname}"] = session(graphs[g], a.threads, kw, entries)
            errors[f"{g}, {sname}"] = errors[g]
    rounds = {n: [] for n in sessions}
    for r in range(a.rounds):
        for n, s in sessions.items():
            rounds[n].append(timed(s, feed, a.min_runs, a.min_seconds))
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    base = statistics.median(rounds["int8 (export recipe)"])
    rows = []
    for n, ms in rounds.items():
        med = statistics.median(ms)
        rows.append({"variant": n, "median_ms": med, "min_ms": min(ms), "max_ms": max(ms), "rounds": ms,
                     "vs_int8_recipe": base / med, "mean_abs_err_vs_fp32": errors[n], **notes.get(n, {})})
    host = machine(with_gpu=False)
    model_name, flags = host.cpu_model, host.cpu_flags
    doc = {"run": run.name, "experiment": cfg.name, "batch_size": a.batch_size, "threads": a.threads,
           "export_recipe": {"reduce_range": isa["reduce_range"], "why": isa["why"]},
           "rounds": a.rounds, "cpu": {"model": model_name, "flags": flags}, "calibration": f"{a.calib_count} {src}",
           "variants": rows, "method": "median of per-round medians; [min-max] of the round medians; interleaved"}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(f"{'variant':44s} {'ms/batch':>9s} {'[min-max]':>17s} {'speed vs recipe':>16s} {'MAE vs fp32':>12s}")
    for r in rows:
        print(f"{r['variant']:44s} {r['median_ms']:9.3f} [{r['min_ms']:7.3f}-{r['max_ms']:7.3f}] "
              f"{r['vs_int8_recipe']:15.3f}x {r['mean_abs_err_vs_fp32']:12.5f}")
    print(f"CPU {model_name} flags {flags}; written {a.out}")


if __name__ == "__main__":
    main()
