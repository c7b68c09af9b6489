"""Accuracy-aware int8: the fastest QDQ graph that passes the task's accuracy gate.

Quantize everything; if the gate fails, rank the quantized nodes by the error each adds
(exports.layer_error, on calibration inputs) and try them in fp32 one at a time, most harmful first
(ORT's nodes_to_exclude), re-quantizing and re-gating after each: a node stays in fp32 only if it
improved the gated metric (excluding a node can also make it worse: its neighbours' Q/DQ placement
changes), until the gate passes or `max_fallback` nodes were tried. Every step is recorded (nodes, gate value, pass) together with the
speed of the fp32 graph, the all-int8 graph and the chosen one, so the accuracy bought is priced.

Intel's Neural Compressor falls back layer by layer the same way but judges speed by nothing; here
each step's latency is a quick median at export time (the bench measures properly, with intervals).
The caller supplies the gate (a callable on the int8 file), so this module stays free of harness.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from exports import quantize
from exports.layer_error import layer_errors
from exports.quantize import QuantOptions, QuantResult

__all__ = ["accuracy_aware_int8", "median_ms"]

ERROR_IMAGES, ERROR_BATCH = 32, 4   # the per-layer error's inputs: the first 32 calibration images, 4 at a
                                    # time (every float tensor of both graphs is an output: memory grows with the batch)


def median_ms(path, feed: Mapping[str, np.ndarray], threads: int | None, reps: int = 15) -> float:
    """Median milliseconds of one ORT CPU run of `feed` (after 3 warm-up runs)."""
    from exports.session import OrtSession

    sess = OrtSession(path, threads=threads, device="cpu")
    for _ in range(3):
        sess.run_unchecked(feed)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run_unchecked(feed)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def accuracy_aware_int8(fp32_path, out_path, calib_batches: Sequence[Mapping[str, np.ndarray]],
                        gate: Callable[[Path], dict], options: QuantOptions | None = None,
                        metadata: Mapping[str, str] | None = None, fallback: bool = True,
                        max_fallback: int = 8, threads: int | None = None) -> tuple[QuantResult, dict, dict]:
    """(the int8 graph written to out_path, its gate, a record for export.json).

    gate(path) -> {"pass": bool, "value"?, "mae"?, ...} judges one int8 file. With fallback=False the
    all-int8 graph is kept whatever its gate says (the record still ranks the layers)."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    options = options or QuantOptions()
    q = quantize.quantize_int8(fp32_path, out_path, calib_batches, metadata=metadata, options=options)
    verdict = gate(out_path)
    ranking = layer_errors(fp32_path, out_path, _rebatch(calib_batches, ERROR_IMAGES, ERROR_BATCH), threads=threads,
                           workdir=out_path.parent)
    steps = [{"fp32_nodes": [], "pass": verdict["pass"], "gate": _brief(verdict)}]
    record = {"layer_errors": ranking, "fallback": {"asked": fallback, "max_fallback": max_fallback,
                                                    "steps": steps, "kept_fp32": [], "result": None}}
    if verdict["pass"] or not fallback:
        record["fallback"]["result"] = "all quantized nodes int8: the gate passed" if verdict["pass"] \
            else "not asked: the all-int8 graph is kept though it fails the gate"
        return q, verdict, record
    feed = dict(calib_batches[0])
    all_int8_ms = median_ms(out_path, feed, threads)
    kept: list[str] = list(options.nodes_to_exclude)
    best, best_q, best_verdict = _score(verdict), q, verdict
    for row in ranking[:max_fallback]:
        trial = [*kept, row["node"]]
        q = quantize.quantize_int8(fp32_path, out_path, calib_batches, metadata=metadata,
                                   options=replace(options, nodes_to_exclude=tuple(trial)))
        verdict = gate(out_path)
        helped = verdict["pass"] or _score(verdict) > best
        steps.append({"fp32_nodes": trial, "tried": row["node"], "module": row["module"], "op": row["op"],
                      "pass": verdict["pass"], "kept_in_fp32": helped, "gate": _brief(verdict)})
        print(f"  int8 fallback: {row['node']} ({row['op']}, {row['module'] or 'top level'}) in fp32 -> "
              f"{'PASS' if verdict['pass'] else 'better, kept' if helped else 'no better, back to int8'}")
        if helped:
            kept, best, best_q, best_verdict = trial, _score(verdict), q, verdict
        if verdict["pass"]:
            break
    if steps[-1]["fp32_nodes"] != kept:  # the last trial did not help: the file must hold the kept set
        best_q = quantize.quantize_int8(fp32_path, out_path, calib_batches, metadata=metadata,
                                        options=replace(options, nodes_to_exclude=tuple(kept)))
    q, verdict = best_q, best_verdict
    fb = record["fallback"]
    # where each kept node really runs once ORT has fused the graph: excluding a node keeps its weights in
    # fp32, but ORT can still fuse it into an int8 kernel (its input stays quantized for other readers)
    runs_in = quantize.node_precisions(quantize.optimized_graph(out_path))
    fb["kept_fp32"] = [{"node": s["tried"], "module": s["module"], "op": s["op"], "runs_in": runs_in.get(s["tried"])}
                       for s in steps[1:] if s["kept_in_fp32"]]
    for k in fb["kept_fp32"]:
        if k["runs_in"] == "int8":
            print(f"  note: {k['node']} was excluded from quantization, but ONNX Runtime still runs it in an int8 "
                  "kernel (its input stays quantized for other readers)")
    fb["result"] = (f"passed with {len(kept)} node(s) in fp32" if verdict["pass"] else
                    f"still failing: {len(steps) - 1} node(s) tried, {len(kept)} kept in fp32 (max_fallback={max_fallback})")
    fb["speed"] = {"batch": int(next(iter(feed.values())).shape[0]), "threads": threads,
                   "ms": {"fp32": median_ms(fp32_path, feed, threads), "int8_all": all_int8_ms,
                          "int8_chosen": median_ms(out_path, feed, threads)},
                   "method": "median of 15 ORT CPU runs on one calibration batch at export time (a price tag, "
                             "not a benchmark: `segvae bench` measures with intervals)"}
    return q, verdict, record


def _score(gate: dict) -> float:
    """Higher is better: the gated metric (Dice), else minus the output error (CVAEs)."""
    if gate.get("value") is not None:
        return float(gate["value"])
    return -float(gate["mae"]) if gate.get("mae") is not None else float("-inf")


def _rebatch(batches: Sequence[Mapping[str, np.ndarray]], n: int, size: int) -> list[dict]:
    """The first n samples of a list of feed dicts, in feed dicts of `size` samples."""
    whole = {k: np.concatenate([b[k] for b in batches])[:n] for k in batches[0]}
    count = len(next(iter(whole.values())))
    return [{k: v[i:i + size] for k, v in whole.items()} for i in range(0, count, size)]


def _brief(gate: dict) -> dict:
    return {k: gate.get(k) for k in ("metric", "value", "reference", "ratio", "target", "mae", "max_mae", "reasons")}
