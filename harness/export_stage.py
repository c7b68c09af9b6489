"""`segvae export`: a trained run -> ONNX graphs in RUN/onnx, each checked against PyTorch, plus
optional int8 (with its accuracy gate) and fp16 copies, and export.json listing files and figures.

The graph tooling is exports/ (which imports nothing from harness); this module is the stage: it
loads the run, picks the data (held-out images for parity, training images for calibration), runs
the checks and writes the folder. All files are built in a temporary folder beside out_dir and moved
into place only after every check passed; export.json is written last. A failed parity check (or,
with strict=True, a failed int8 accuracy gate) raises UserError and leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exports.accuracy_gate import DEFAULT_MAX_MAE, DEFAULT_TARGET, accuracy_gate, check_target, mae_gate
from exports.onnx_export import (FP16_TOLERANCE, OPSET, REWRITES, GraphSpec, build_metadata, cpu_session,
                                 export_checked, fp16_checked, graph_specs, parity_checks)
from exports.quantize import QuantOptions
from harness.errors import UserError
from harness.export_data import (CALIBRATION_BATCH, ExportData, calibration_inputs, dataset_info, inputs_for,
                                 seg_batch, seg_eval_set)
from harness.hardware import VNNI_FLAGS, machine
from harness.io import atomic_write_json
from harness.run_folder import (EXPORT_FILE, GRAPH_FILES, ONNX_DIR, ONNX_PRECISIONS, data_root_for, load_run,
                                onnx_name)
from models.rewrites import DEFAULT_UP4, UP4_FORMS


def int8_source(graph_file: str) -> str:
    """The rewritten fp32 graph int8 is made from (checked, not shipped): model.onnx -> model.int8-source.onnx."""
    return onnx_name(graph_file, "int8-source")


INT8_SOURCE = int8_source(GRAPH_FILES["segmentation"])  # the UNet's: model.int8-source.onnx
# every name an export may write: stale ones from an earlier export are removed when not rewritten
KNOWN_OUTPUTS = (*(onnx_name(g, p) for g in GRAPH_FILES.values() for p in ONNX_PRECISIONS), EXPORT_FILE)

__all__ = ["export_run", "INT8_SOURCE", "KNOWN_OUTPUTS", "int8_source"]


@dataclass
class ExportSettings:
    quantize: str | None = None
    calib_count: int = 128
    tolerance: float = 1e-4
    threads: int | None = None
    fp16: bool = False
    fp16_tolerance: float = FP16_TOLERANCE
    accuracy_target: float = DEFAULT_TARGET
    strict: bool = False
    reduce_range: str = "auto"      # 7-bit int8 weights: auto (on CPUs without VNNI) | on | off
    max_mae: float = DEFAULT_MAX_MAE      # CVAE gate: mean |int8 - fp32| of the swap outputs
    int8_fallback: bool = False           # accuracy-aware: harmful nodes back to fp32 until the gate passes
    max_fallback: int = 8
    quant: QuantOptions = field(default_factory=QuantOptions)

    def validate(self) -> None:
        if self.reduce_range not in REDUCE_RANGE:
            raise UserError(f"invalid reduce_range={self.reduce_range!r}: expected one of {', '.join(REDUCE_RANGE)}")
        if self.quantize not in (None, "int8"):
            raise UserError(f"invalid quantize={self.quantize!r}: expected 'int8' or None")
        for name in ("tolerance", "fp16_tolerance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise UserError(f"invalid {name}={v!r}: expected a positive number")
        check_target(self.accuracy_target)
        if not (isinstance(self.max_mae, (int, float)) and self.max_mae > 0):
            raise UserError(f"invalid max_mae={self.max_mae!r}: expected a positive number (mean |int8 - fp32| on "
                            f"[0, 1] images, default {DEFAULT_MAX_MAE})")
        if not (isinstance(self.max_fallback, int) and self.max_fallback >= 1):
            raise UserError(f"invalid max_fallback={self.max_fallback!r}: expected a positive integer")


def export_run(run_dir, out_dir=None, quantize=None, calib_count: int = 128, data_root=None,
               tolerance: float = 1e-4, threads: int | None = None, fold_batchnorm: bool = True,
               int8_pixel_shuffle_up: bool = True, fp16: bool = False, fp16_tolerance: float = FP16_TOLERANCE,
               accuracy_target: float = DEFAULT_TARGET, strict: bool = False, reduce_range: str = "auto",
               max_mae: float = DEFAULT_MAX_MAE, int8_fallback: bool = False, max_fallback: int = 8,
               quant: QuantOptions | None = None, int8_up4: str = DEFAULT_UP4) -> dict:
    """Export run_dir (config.json + model.safetensors) to ONNX in out_dir (default run_dir/onnx).

    Checks parity with PyTorch on held-out data at batch 1 and 7 on ORT's CPU provider (UserError
    above `tolerance`, and then no file is left behind); quantize="int8" also writes model.int8.onnx /
    swap.int8.onnx calibrated on `calib_count` training images, with its accuracy gate against the fp32
    graph (export.json `accuracy_gate`; strict=True refuses a failing graph); fp16=True writes
    model.fp16.onnx / swap.fp16.onnx for ORT's CUDA provider, checked within fp16_tolerance.
    fold_batchnorm (UNets) and int8_pixel_shuffle_up choose the graph rewrites (see REWRITES). The second
    applies to the graph that is quantized only, itself exported and parity-checked first (not shipped):
    the UNet's ConvTranspose2d(2, stride 2) as 1x1 Conv + DepthToSpace, the CVAE's ConvTranspose2d(4,
    stride 2, padding 1) as a SubpixelUp4 of form int8_up4 ("conv3x3" | "conv2x2"); the fp32 files keep
    their ConvTranspose.
    data_root None: the data root the run recorded (RUN/run.json); a run that recorded none is an error.
    Returns the export.json dict.
    """
    settings = ExportSettings(quantize, calib_count, tolerance, threads, fp16, fp16_tolerance, accuracy_target, strict,
                              reduce_range, max_mae, int8_fallback, max_fallback, quant or QuantOptions())
    settings.validate()
    if int8_up4 not in UP4_FORMS:
        raise UserError(f"invalid int8_up4={int8_up4!r}: expected one of {', '.join(UP4_FORMS)}")
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir)
    model.eval()
    data_root = data_root_for(run_dir, data_root, "segvae export")  # the run's own data unless told otherwise
    out_dir = Path(out_dir) if out_dir is not None else run_dir / ONNX_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path exists and is not a directory: {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    data = ExportData(cfg, data_root)
    try:
        specs = graph_specs(cfg, model, fold_batchnorm=fold_batchnorm)
        to_quantize = None
        if quantize == "int8" and int8_pixel_shuffle_up:  # the main graph (model / swap), rewritten
            rewritten = graph_specs(cfg, model, fold_batchnorm=fold_batchnorm, pixel_shuffle_up=True,
                                    convtranspose4=int8_up4)[0]
            to_quantize = replace(rewritten, file=int8_source(rewritten.file))
        report = _export_into(cfg, specs, tmp, data, settings, to_quantize)
        atomic_write_json(tmp / EXPORT_FILE, report)
        _move_into_place(tmp, out_dir, [*report["files"], EXPORT_FILE])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = ", ".join([*report["files"], EXPORT_FILE])
    print(f"ONNX export of {cfg.name} written to {out_dir}: {names}")
    return report


def _checks_for(cfg, spec: GraphSpec, data: ExportData) -> tuple[dict, str]:
    inputs, source = inputs_for(cfg, spec.kind, data, 7)
    if source == "random":
        print(f"  note: {spec.file} parity on RANDOM inputs: held-out data unavailable ({data.error})")
    return parity_checks(cfg, spec, inputs, source), source


def _export_into(cfg, specs: list[GraphSpec], tmp: Path, data: ExportData, settings: ExportSettings,
                 to_quantize: GraphSpec | None = None) -> dict:
    """specs are exported and shipped; to_quantize (default specs[0]) is the graph int8 is made from."""
    files: dict[str, dict] = {}
    parity: dict[str, dict[str, float]] = {}
    scales: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    info = dataset_info(cfg)
    print(f"Exporting {cfg.name} ({cfg.task}, config {cfg.hash()}) to ONNX opset {OPSET}")
    for spec in specs:
        checks, sources[spec.file] = _checks_for(cfg, spec, data)
        written, parity[spec.file], scales[spec.file] = export_checked(
            cfg, spec, tmp, checks, build_metadata(cfg, spec, info), settings.tolerance, settings.threads)
        for p in written:
            files[p.name] = {"graph": spec.kind, "precision": "fp32", "bytes": p.stat().st_size}
        files[spec.file].update({"inputs": {n: spec.inputs_doc[n] for n in spec.input_names},
                                 "output": {spec.output_name: spec.output_doc}})
        if settings.fp16 and spec is specs[0]:  # the main graph (model / swap), as for int8
            name = onnx_name(spec.file, "fp16")
            parity[name], scales[name] = fp16_checked(spec, tmp / spec.file, tmp / name, checks,
                                                      settings.fp16_tolerance, settings.threads)
            sources[name] = sources[spec.file]
            files[name] = {"graph": spec.kind, "precision": "fp16", "from": spec.file,
                           "bytes": (tmp / name).stat().st_size, "tolerance": settings.fp16_tolerance,
                           "meant_for": "ONNX Runtime's CUDA provider (float32 inputs and outputs)"}
    int8, gate = None, None
    if settings.quantize == "int8":
        source = to_quantize or specs[0]  # model.onnx (UNet) or swap.onnx (CVAE); the decoder stays fp32
        if to_quantize is not None:       # a rewritten fp32 graph, checked like the others, not shipped
            checks, sources[source.file] = _checks_for(cfg, source, data)
            _, parity[source.file], scales[source.file] = export_checked(
                cfg, source, tmp, checks, build_metadata(cfg, source, info), settings.tolerance, settings.threads)
        name = onnx_name(specs[0].file, "int8")
        int8, gate = _int8(cfg, source, tmp / source.file, tmp / name, data, settings)
        int8["graph_rewrites"] = {k: REWRITES[k] for k in source.rewrites}
        files[name] = {"graph": source.kind, "precision": "int8", "bytes": (tmp / name).stat().st_size}
    return {
        "experiment": cfg.name, "config_hash": cfg.hash(), "task": cfg.task, "opset": OPSET,
        "torch_version": torch.__version__, "onnxruntime_version": _ort_version(),
        "parity_provider": "CPUExecutionProvider",
        "files": files, "tolerance": settings.tolerance, "parity": parity, "parity_scale": scales,
        "parity_inputs": sources,
        "valid_sizes": build_metadata(cfg, specs[0], info)["valid_sizes"],
        "graph_rewrites": {k: REWRITES[k] for k in specs[0].rewrites},
        "int8": int8, "accuracy_gate": gate,
    }


# ---------------------------------------------------------------------------- int8 and its gate
REDUCE_RANGE = ("auto", "on", "off")


def int8_isa(host, reduce_range: str = "auto") -> dict:
    """The int8 settings for the CPU that exports (and gates) the graph, recorded in export.json.

    ONNX Runtime's guidance for its U8S8 kernels: on AVX2/AVX-512 CPUs without VNNI, VPMADDUBSW adds
    pairs of u8 x s8 products into saturating int16; if accuracy drops, quantize weights to 7 bits
    (reduce_range) or use U8U8. With VNNI the products accumulate in int32 and full range is safe.
    auto: reduce_range where VNNI is absent."""
    vnni = any(f in host.cpu_flags for f in VNNI_FLAGS)
    on = (not vnni) if reduce_range == "auto" else reduce_range == "on"
    why = ("asked" if reduce_range != "auto" else
           "VNNI: int32 accumulation, full 8-bit weights" if vnni else
           "no VNNI: ORT's U8S8 AVX2 kernels sum pairs in saturating int16, so weights use 7 bits")
    return {"reduce_range": on, "why": why, "vnni": vnni, "cpu_model": host.cpu_model, "cpu_flags": host.cpu_flags}


_ONNX_INT = {"QUInt8": "uint8", "QInt8": "int8"}


def _int8(cfg, spec: GraphSpec, fp32_path: Path, out_path: Path, data: ExportData,
          settings: ExportSettings) -> tuple[dict[str, Any], dict]:
    """Quantize fp32_path into out_path on training images; (its export.json entry, its accuracy gate)."""
    from exports.int8_fallback import accuracy_aware_int8

    n = int(settings.calib_count)
    train = data.split("train")
    if train is not None and len(train) < n:
        print(f"  note: the train split has {len(train)} images; calibrating on all of them (asked {n})")
        n = len(train)
    calib, drawn = calibration_inputs(cfg, data, n)
    calib_source, n = drawn["source"], drawn["count"]
    if calib_source == "random":
        print(f"  WARNING: calibrating int8 on RANDOM inputs: training data unavailable ({data.error})")
    else:
        print(f"  int8 calibration: {n} training images, class-stratified (seed {drawn['seed']}), classes {drawn['classes']}")
    bs = CALIBRATION_BATCH
    batches = [{k: v[i:i + bs].numpy() for k, v in calib.items()} for i in range(0, n, bs)]
    isa = int8_isa(machine(with_gpu=False), settings.reduce_range)
    print(f"  int8 for this CPU: reduce_range {'on' if isa['reduce_range'] else 'off'} ({isa['why']})")
    quant = replace(settings.quant, reduce_range=isa["reduce_range"])  # the CPU decides; the recipe's other knobs stay
    measured: dict = {}

    def gate_of(path: Path) -> dict:
        fp32, int8 = cpu_session(fp32_path, settings.threads), cpu_session(path, settings.threads)
        if cfg.task == "segmentation":
            m, g = _seg_gate(cfg, fp32, int8, data, settings.accuracy_target)
        else:
            m, g = _cvae_gate(cfg, fp32, int8, data, settings.accuracy_target, settings.max_mae)
        measured.clear()
        measured.update(m)
        return g

    q, gate, record = accuracy_aware_int8(
        fp32_path, out_path, batches, gate_of, options=quant, fallback=settings.int8_fallback,
        max_fallback=settings.max_fallback, threads=settings.threads,
        metadata={"precision": "int8", "quantization": json.dumps(
            {"format": "QDQ", "activations": _ONNX_INT[quant.activations],
             "weights": _ONNX_INT[quant.weights] + (" per-channel" if quant.per_channel else ""),
             "reduce_range": quant.reduce_range,
             "calibration": f"MinMax on {n} {calib_source} images (class-stratified, seed {drawn['seed']})"})})
    result: dict[str, Any] = {"file": out_path.name, "from": fp32_path.name, "calibration_count": n, "isa": isa,
                              "calibration_source": calib_source, "calibration": drawn, "settings": q.settings,
                              "fp32_ops": q.fp32_ops, "int8_ops": q.int8_ops, **measured, **record}
    left = ", ".join(f"{k} x{v}" for k, v in sorted(q.fp32_ops.items())) or "none"
    print(f"  {out_path.name}: ops still computing in fp32 after ORT's QDQ fusion: {left}")
    _report_gate(out_path.name, gate, settings.strict)
    return result, gate


def _dice(sess, ds, batch: int = 16) -> dict[str, float]:
    from harness.metrics import seg_metrics, seg_stats

    stats = []
    for start in range(0, len(ds), batch):
        x, m = seg_batch(ds, batch, start)
        logits = sess.run({"image": x.numpy()})["logits"]
        stats.append(seg_stats(torch.from_numpy(logits), m))
    return seg_metrics(torch.cat(stats))


def _seg_gate(cfg, fp32, int8, data: ExportData, target: float) -> tuple[dict, dict]:
    """Dice of the int8 graph vs the fp32 graph's Dice on the same images (MLPerf: >= target of fp32)."""
    val, src = seg_eval_set(cfg, data)
    a, b = _dice(fp32, val), _dice(int8, val)
    measured = {"metric": "dice (dataset-level, logits > 0)", "eval_source": src, "count": a["count"],
                "dice_fp32": a["dice"], "dice_int8": b["dice"], "dice_delta": b["dice"] - a["dice"]}
    print(f"  int8: Dice on {a['count']} {src} images: fp32 ORT {a['dice']:.4f}, "
          f"int8 ORT {b['dice']:.4f} (delta {b['dice'] - a['dice']:+.4f})")
    gate = accuracy_gate(b["dice"], a["dice"], target)
    gate.update(metric="dice", value=b["dice"], reference=a["dice"], count=a["count"], eval_source=src)
    return measured, _random_fails(gate, src)


def _cvae_gate(cfg, fp32, int8, data: ExportData, target: float, max_mae: float = DEFAULT_MAX_MAE) -> tuple[dict, dict]:
    """Judge-free at export: mean |int8 - fp32| of the swap outputs on the same inputs and noise.
    (Label-swap success needs the judge: the bench gates it.)"""
    val = data.split("val")
    count = min(64, len(val)) if val is not None else 64
    inp, src = inputs_for(cfg, "swap", data, count, split="val", seed=2)
    feed = {k: v.numpy() for k, v in inp.items()}
    ref, got = fp32.run(feed)["generated"], int8.run(feed)["generated"]
    err = np.abs(got.astype(np.float64) - ref)
    measured = {"metric": "abs error of int8 vs fp32 ORT swap outputs (identical eps)", "eval_source": src,
                "count": count, "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean())}
    print(f"  int8: vs fp32 on {count} {src} inputs (same eps): max abs err {err.max():.4f}, mean {err.mean():.5f}")
    # no reference metric without the judge: the gate is the MAE bound alone
    gate = mae_gate(float(err.mean()), target, max_mae)
    gate.update(metric="mae vs fp32 outputs (judge-free)", value=None, reference=None, count=count, eval_source=src)
    return measured, _random_fails(gate, src)


def _random_fails(gate: dict, source: str) -> dict:
    if source == "random":
        gate["reasons"].append("measured on random stand-in data: the run's validation data was unavailable")
        gate["pass"] = False
    return gate


def _report_gate(name: str, gate: dict, strict: bool) -> None:
    verdict = "PASS" if gate["pass"] else "FAIL: " + "; ".join(gate["reasons"])
    if gate["mae"] is not None:
        what = f"MAE {gate['mae']:.5f} (max {gate['max_mae']})"
    elif gate["ratio"] is not None:
        what = f"{gate['value']:.4f} vs fp32 {gate['reference']:.4f}, ratio {gate['ratio']:.4f} (target {gate['target']})"
    else:
        what = f"{gate['value']} vs fp32 {gate['reference']}"
    print(f"  {name}: accuracy gate on {gate['metric']}, {what}: {verdict}")
    if strict and not gate["pass"]:
        raise UserError(f"{name} fails the accuracy gate on {gate['metric']} ({'; '.join(gate['reasons'])}); "
                        f"--strict refuses to write it: nothing was written (drop --strict to keep it, "
                        f"or export without --quantize)")


# ---------------------------------------------------------------------------- files
def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def _move_into_place(tmp: Path, out_dir: Path, names: list[str]) -> None:
    """Each file os.replace()d into out_dir (same filesystem: atomic), export.json last;
    outputs of an earlier export that this one did not rewrite are removed (they would be stale)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in names[:-1]:
        os.replace(tmp / n, out_dir / n)
    for stale in KNOWN_OUTPUTS:
        if stale not in names and (out_dir / stale).is_file():
            (out_dir / stale).unlink()
            data = out_dir / f"{stale}.data"
            if data.is_file():
                data.unlink()
    os.replace(tmp / names[-1], out_dir / names[-1])
