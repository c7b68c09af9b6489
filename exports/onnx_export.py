"""Export a trained run to ONNX, prove parity with PyTorch on held-out data, optionally quantize to int8.

Graphs (opset 18, `torch.onnx.export(..., dynamo=True)`, weights embedded in the .onnx file):

  segmentation  model.onnx    image float32 [N,3,H,W] ImageNet-normalised (mean/std in the metadata)
                              -> logits float32 [N,1,H,W]: mask logits; probability = sigmoid(logits),
                              mask = logits > 0 (probability > 0.5), 1 = pet, 0 = background.
                              N, H and W are dynamic: H and W must be multiples of 2**depth (16 for
                              the registry's depth 4), e.g. the trained size `image_size`.
  cvae          swap.onnx     image float32 [N,C,H,W] in [0,1], label int64 [N] (the TRUE class),
                              new_label int64 [N] (the class to generate), eps float32 [N,latent]
                              -> generated float32 [N,C,H,W] in [0,1]  (encode with label, decode with new_label)
                decoder.onnx  z float32 [N,latent], label int64 [N] -> generated float32 [N,C,H,W]
                              N dynamic; H, W, C fixed to the dataset's native size.
  The noise is an input (eps / z): the graphs hold no random op, so every backend sees the same inputs.

Every file carries metadata_props (string values, lists/objects JSON-encoded): experiment, variant,
graph, precision, normalization/mean/std, image_size, valid_sizes, class_names, mask_rule, output,
num_classes, latent_dim, config_hash, onnx_opset, torch_version, ... Nothing from the environment.

Validation: onnx.checker, then ONNX Runtime vs PyTorch on the run's validation split at batch 1 and 7
(random inputs only when the data cannot be loaded, and the printout says so). The bound is
`tolerance` x max(1, max |PyTorch output|) (fp32 error grows with the output's magnitude); above it:
UserError and nothing is written. All files are built in a temporary folder beside out_dir and moved
into place only after every check passed; `export.json` (written last) lists files and figures.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import UserError
from harness.io import atomic_write_json

OPSET = 18
PARITY_BATCHES = (1, 7)
EXTERNAL_DATA_LIMIT = int(1.5 * 2**30)  # bytes of weights above which they go to <file>.data beside it
EXPORT_JSON = "export.json"
INT8_SOURCE = "model.int8-source.onnx"  # the rewritten fp32 UNet graph int8 is made from (checked, not shipped)
# every name an export may write: stale ones from an earlier export are removed when not rewritten
KNOWN_OUTPUTS = ("model.onnx", "swap.onnx", "decoder.onnx", "model.int8.onnx", "swap.int8.onnx",
                 "decoder.int8.onnx", "model.fp16.onnx", "swap.fp16.onnx", "decoder.fp16.onnx", EXPORT_JSON)

__all__ = ["export_run", "graph_specs", "build_metadata", "OPSET"]


# ---------------------------------------------------------------------------- graph descriptions
@dataclass
class GraphSpec:
    file: str
    kind: str                      # "segmentation" | "swap" | "decoder"
    module: torch.nn.Module
    input_names: list[str]
    output_name: str
    dynamic_shapes: tuple
    inputs_doc: dict[str, str]
    output_doc: str
    reference: torch.nn.Module | None = None  # the trained module parity is checked against (default: module)
    rewrites: tuple[str, ...] = ()             # function-preserving graph rewrites applied before export

    @property
    def ref(self) -> torch.nn.Module:
        return self.reference if self.reference is not None else self.module


REWRITES = {
    # torch 2.14's dynamo exporter (its onnxscript optimizer) folds eval-mode BatchNorm too; doing it
    # here keeps the graph independent of the exporter version and lets torch backends share it
    "fold_batchnorm": "each Conv+BatchNorm pair folded into one Conv",
    "pixel_shuffle_up": "ConvTranspose2d(2, stride 2) as 1x1 Conv + DepthToSpace, so that the int8 graph "
                        "holds no fp32 ConvTranspose (applied to the int8 graph only: fp32 is faster without it)",
}


def graph_specs(cfg, model: torch.nn.Module, fold_batchnorm: bool = True,
                pixel_shuffle_up: bool = False) -> list[GraphSpec]:
    """The graphs of one run. UNets are exported in `models.unet.inference_form` (same function,
    checked against the trained module) with the rewrites asked for."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    if cfg.task == "segmentation":
        from models.unet import inference_form

        step = 2 ** int(cfg.model.get("depth", 4))
        h, w = Dim("h_blocks", min=1), Dim("w_blocks", min=1)
        rewrites = tuple(k for k, on in (("fold_batchnorm", fold_batchnorm), ("pixel_shuffle_up", pixel_shuffle_up))
                         if on)
        deployed = inference_form(model, fold_batchnorm=fold_batchnorm, pixel_shuffle_up=pixel_shuffle_up)
        return [GraphSpec(
            "model.onnx", "segmentation", deployed, ["image"], "logits",
            ({0: batch, 2: step * h, 3: step * w},),
            {"image": f"float32 [N,3,H,W], RGB/255 normalised with ImageNet mean/std; H, W multiples of {step}"},
            "float32 [N,1,H,W] mask logits; probability = sigmoid(logits); mask = logits > 0 "
            "(probability > 0.5); 1 = pet, 0 = background", reference=model.eval(), rewrites=rewrites)]
    from models.cvae import Decoder, LabelSwap

    c, s, k = int(cfg.model["in_channels"]), int(cfg.model["image_size"]), cfg.num_classes
    latent = int(cfg.model["latent_dim"])
    return [
        GraphSpec("swap.onnx", "swap", LabelSwap(model).eval(), ["image", "label", "new_label", "eps"], "generated",
                  ({0: batch}, {0: batch}, {0: batch}, {0: batch}),
                  {"image": f"float32 [N,{c},{s},{s}] in [0,1]",
                   "label": f"int64 [N] true class in [0,{k})",
                   "new_label": f"int64 [N] class to generate in [0,{k})",
                   "eps": f"float32 [N,{latent}] standard normal noise (z = mu + sigma * eps)"},
                  f"float32 [N,{c},{s},{s}] in [0,1]: the decoder mean for (encode(image, label) sampled "
                  "with eps, new_label)"),
        GraphSpec("decoder.onnx", "decoder", Decoder(model).eval(), ["z", "label"], "generated",
                  ({0: batch}, {0: batch}),
                  {"z": f"float32 [N,{latent}] latent (standard normal for sampling from the prior)",
                   "label": f"int64 [N] class in [0,{k})"},
                  f"float32 [N,{c},{s},{s}] in [0,1]: the decoder mean for (z, label)"),
    ]


def _class_names(dataset: str) -> list[str]:
    try:
        from harness.data import class_names
        return list(class_names(dataset))
    except ImportError:  # pragma: no cover - harness.data is part of the package
        return {"pets": ["background", "pet"], "mnist": [str(i) for i in range(10)]}.get(dataset, [])


def build_metadata(cfg, spec: GraphSpec, precision: str = "fp32") -> dict[str, str]:
    """The metadata_props of one graph: strings only (lists/objects/null as JSON)."""
    try:
        from harness.data import IMAGENET_MEAN, IMAGENET_STD, MASK_RULE
    except ImportError:  # pragma: no cover
        IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        MASK_RULE = "trimap 1 (pet) and 3 (border) -> 1; 2 (background) -> 0"
    names = _class_names(cfg.dataset)
    meta: dict[str, Any] = {
        "experiment": cfg.name, "task": cfg.task, "dataset": cfg.dataset, "graph": spec.kind,
        "precision": precision, "config_hash": cfg.hash(), "onnx_opset": OPSET,
        "torch_version": torch.__version__, "producer": "segvae-bench exports/onnx_export.py",
        "class_names": names, "inputs": spec.inputs_doc, "output": spec.output_doc,
        "graph_rewrites": {k: REWRITES[k] for k in spec.rewrites},
    }
    if cfg.task == "segmentation":
        depth = int(cfg.model.get("depth", 4))
        step = 2 ** depth
        meta.update({
            "variant": {"task": cfg.task, "down": cfg.model.get("down"), "up": cfg.model.get("up"), "loss": cfg.loss},
            "normalization": "imagenet", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "preprocess": "RGB; resize to image_size x image_size (bilinear); /255; (x - mean) / std; NCHW",
            "image_size": int(cfg.image_size), "in_channels": int(cfg.model.get("in_channels", 3)),
            "depth": depth, "size_multiple": step,
            "valid_sizes": f"batch N >= 1; height and width any positive multiples of {step} (2**depth, "
                           f"depth={depth}); trained at {cfg.image_size}x{cfg.image_size}",
            "mask_rule": MASK_RULE, "num_classes": len(names), "latent_dim": None,
        })
    else:
        c, s = int(cfg.model["in_channels"]), int(cfg.model["image_size"])
        meta.update({
            "variant": {"task": cfg.task, "down": None, "up": None, "loss": cfg.loss},
            "normalization": "[0,1]", "mean": [0.0] * c, "std": [1.0] * c,
            "preprocess": "pixels / 255 (range [0,1]), no mean/std normalisation; NCHW",
            "image_size": s, "in_channels": c,
            "valid_sizes": f"batch N >= 1; image fixed at {c}x{s}x{s}",
            "mask_rule": None, "num_classes": cfg.num_classes, "latent_dim": int(cfg.model["latent_dim"]),
        })
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


# ---------------------------------------------------------------------------- export of one graph
def _export_graph(spec: GraphSpec, example: tuple, path: Path, metadata: dict[str, str]) -> list[Path]:
    """torch.onnx.export (dynamo) -> path, metadata added, checker passed. Returns the files written."""
    import onnx

    weight_bytes = sum(t.numel() * t.element_size() for t in spec.module.state_dict().values())
    external = weight_bytes >= EXTERNAL_DATA_LIMIT
    chatter = io.StringIO()  # the exporter prints its progress steps; shown only if it fails
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            prog = torch.onnx.export(spec.module, example, None, dynamo=True, opset_version=OPSET,
                                     input_names=spec.input_names, output_names=[spec.output_name],
                                     dynamic_shapes=spec.dynamic_shapes, external_data=external, verbose=False)
    except Exception as e:
        print(chatter.getvalue(), end="")
        raise UserError(f"ONNX export of {spec.file} failed: {type(e).__name__}: {str(e).splitlines()[0][:400]}") from None
    written = [path]
    if not external:
        proto = prog.model_proto
        _set_metadata(proto, metadata)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(path), save_as_external_data=False)
    else:  # beyond protobuf's comfort zone: weights in <file>.data beside the .onnx (relative location)
        prog.save(str(path), external_data=True)
        proto = onnx.load(str(path), load_external_data=False)
        _set_metadata(proto, metadata)
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path), full_check=True)
        written += [path.parent / n for n in _external_files(proto)]
    return written


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in metadata.items():
        proto.metadata_props.add(key=k, value=str(v))


def _external_files(proto) -> list[str]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    locs = []
    for t in _get_all_tensors(proto):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in locs:
                locs.append(loc)
    return locs


# ---------------------------------------------------------------------------- data
def _cycle(t: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:n]


class _Data:
    """Lazily loaded splits of the run's dataset; `error` says why data is unavailable (then random inputs)."""

    def __init__(self, cfg, data_root):
        self.cfg, self.data_root = cfg, data_root
        self._splits, self.error = None, None

    def split(self, name: str):
        if self._splits is None and self.error is None:
            try:
                from harness.data import build_splits
                self._splits = build_splits(self.cfg.replace(augment=False), data_root=self.data_root, download=False)
            except (UserError, ImportError, OSError) as e:
                self.error = f"{type(e).__name__}: {e}"
        if self._splits is None or len(self._splits[name]) == 0:
            return None
        return self._splits[name]


def _seg_batch(ds, n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    idx = range(start, min(start + n, len(ds)))
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([m for _, m in items])


def _inputs_for(cfg, spec_kind: str, data: _Data, n: int, split: str = "val",
                seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """n inputs for a graph from a REAL split (source name returned), random if the data is unavailable."""
    g = torch.Generator().manual_seed(seed)
    ds = data.split(split)
    if cfg.task == "segmentation":
        if ds is not None:
            x, _ = _seg_batch(ds, n)
            return {"image": _cycle(x, n)}, f"{split} split"
        s = int(cfg.image_size)
        return {"image": torch.randn(n, 3, s, s, generator=g)}, "random"
    from harness.labelswap import swap_inputs, wrong_labels

    k, latent = cfg.num_classes, int(cfg.model["latent_dim"])
    if ds is not None:
        inp = swap_inputs(ds, n=n, num_classes=k, latent_dim=latent, seed=seed)
        inp = {key: _cycle(v, n) for key, v in inp.items()}
        source = f"{split} split"
    else:
        c, s = int(cfg.model["in_channels"]), int(cfg.model["image_size"])
        labels = torch.randint(0, k, (n,), generator=g)
        inp = {"image": torch.rand(n, c, s, s, generator=g), "label": labels,
               "new_label": wrong_labels(labels, k, seed), "eps": torch.randn(n, latent, generator=g)}
        source = "random"
    if spec_kind == "decoder":
        # decoder inputs: prior samples z with the (wrong) labels of the swap inputs
        return {"z": torch.randn(n, latent, generator=torch.Generator().manual_seed(seed + 7)),
                "label": inp["new_label"]}, source
    return inp, source


# ---------------------------------------------------------------------------- checks
def _ort_session(path: Path, threads):
    from exports.session import OrtSession
    return OrtSession(path, threads=threads)


@torch.no_grad()
def _parity(spec: GraphSpec, sess, inputs: dict[str, torch.Tensor], b: int) -> tuple[float, float]:
    """(max |ORT - PyTorch|, the output's scale max(1, max |PyTorch|)).

    Why a scale: fp32 rounding grows with magnitude, and a confident UNet's logits reach 10-15
    (soft-Dice training pushes them out), so a fixed absolute bound rejects a correct graph. The bound
    is tolerance x scale: absolute for outputs in [-1, 1] (CVAE images), relative to the largest
    output beyond; a wrong graph errs by the size of the output itself, far above either.
    """
    args = [inputs[n][:b] for n in spec.input_names]
    ref = spec.ref(*args).float().numpy()
    got = sess.run({n: a.numpy() for n, a in zip(spec.input_names, args)})[spec.output_name]
    if got.shape != ref.shape:
        raise UserError(f"{spec.file}: ONNX Runtime output shape {got.shape} != PyTorch {ref.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    return diff, max(1.0, float(np.max(np.abs(ref))))


def _dice(sess, ds, batch: int = 16) -> dict[str, float]:
    from harness.metrics import seg_metrics, seg_stats

    stats = []
    for start in range(0, len(ds), batch):
        x, m = _seg_batch(ds, batch, start)
        logits = sess.run({"image": x.numpy()})["logits"]
        stats.append(seg_stats(torch.from_numpy(logits), m))
    return seg_metrics(torch.cat(stats))


def _int8(cfg, spec: GraphSpec, fp32_path: Path, out_path: Path, data: _Data, calib_count: int,
          threads) -> dict[str, Any]:
    from exports.quantize import quantize_int8

    n = int(calib_count)
    train = data.split("train")
    if train is not None and len(train) < n:
        print(f"  note: the train split has {len(train)} images; calibrating on all of them (asked {n})")
        n = len(train)
    calib, calib_source = _inputs_for(cfg, spec.kind, data, n, split="train", seed=1)
    if calib_source == "random":
        print(f"  WARNING: calibrating int8 on RANDOM inputs: training data unavailable ({data.error})")
    bs = 16
    batches = [{k: v[i:i + bs].numpy() for k, v in calib.items()} for i in range(0, n, bs)]
    q = quantize_int8(fp32_path, out_path, batches, per_channel=True,
                      metadata={"precision": "int8", "quantization": json.dumps(
                          {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel",
                           "calibration": f"MinMax on {n} {calib_source} images"})})
    result: dict[str, Any] = {"file": out_path.name, "from": fp32_path.name, "calibration_count": n,
                              "calibration_source": calib_source, "settings": q.settings,
                              "fp32_ops": q.fp32_ops, "int8_ops": q.int8_ops}
    fp32, int8 = _ort_session(fp32_path, threads), _ort_session(out_path, threads)
    if cfg.task == "segmentation":
        val = data.split("val")
        if val is None:
            from harness.data import SegmentationDataset  # random stand-in: images and masks
            g = torch.Generator().manual_seed(3)
            s = int(cfg.image_size)
            val = SegmentationDataset((torch.rand(16, 3, s, s, generator=g) * 255).to(torch.uint8),
                                      (torch.rand(16, 1, s, s, generator=g) > 0.5).to(torch.uint8))
            src = "random"
        else:
            src = "val split"
        a, b = _dice(fp32, val), _dice(int8, val)
        result.update({"metric": "dice (dataset-level, logits > 0)", "eval_source": src, "count": a["count"],
                       "dice_fp32": a["dice"], "dice_int8": b["dice"], "dice_delta": b["dice"] - a["dice"]})
        print(f"  {out_path.name}: Dice on {a['count']} {src} images: fp32 ORT {a['dice']:.4f}, "
              f"int8 ORT {b['dice']:.4f} (delta {b['dice'] - a['dice']:+.4f})")
    else:
        val = data.split("val")
        count = min(64, len(val)) if val is not None else 64
        inp, src = _inputs_for(cfg, "swap", data, count, split="val", seed=2)
        feed = {k: v.numpy() for k, v in inp.items()}
        ref, got = fp32.run(feed)["generated"], int8.run(feed)["generated"]
        err = np.abs(got.astype(np.float64) - ref)
        result.update({"metric": "abs error of int8 vs fp32 ORT swap outputs (identical eps)", "eval_source": src,
                       "count": count, "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean())})
        print(f"  {out_path.name}: vs fp32 on {count} {src} inputs (same eps): max abs err {err.max():.4f}, "
              f"mean {err.mean():.5f}")
    left = ", ".join(f"{k} x{v}" for k, v in sorted(q.fp32_ops.items())) or "none"
    print(f"  {out_path.name}: ops still computing in fp32 after ORT's QDQ fusion: {left}")
    return result


# ---------------------------------------------------------------------------- entry point
def export_run(run_dir, out_dir=None, quantize=None, calib_count: int = 128, data_root=None,
               tolerance: float = 1e-4, threads: int | None = None, fold_batchnorm: bool = True,
               int8_pixel_shuffle_up: bool = True) -> dict:
    """Export run_dir (config.json + model.safetensors) to ONNX in out_dir (default run_dir/onnx).

    Checks parity with PyTorch on held-out data at batch 1 and 7 (UserError above `tolerance`,
    and then no file is left behind); quantize="int8" also writes model.int8.onnx / swap.int8.onnx
    calibrated on `calib_count` training images, with its accuracy check. fold_batchnorm and
    int8_pixel_shuffle_up choose the UNet's graph rewrites (see REWRITES; the second applies to the
    graph that is quantized, itself exported and parity-checked first). Returns the export.json dict.
    """
    from harness.run_folder import load_run

    if quantize not in (None, "int8"):
        raise UserError(f"invalid quantize={quantize!r}: expected 'int8' or None")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise UserError(f"invalid tolerance={tolerance!r}: expected a positive number")
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir)
    model.eval()
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "onnx"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path exists and is not a directory: {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    data = _Data(cfg, data_root)
    try:
        specs = graph_specs(cfg, model, fold_batchnorm=fold_batchnorm)
        to_quantize = None
        if quantize == "int8" and cfg.task == "segmentation" and int8_pixel_shuffle_up:
            to_quantize = replace(
                graph_specs(cfg, model, fold_batchnorm=fold_batchnorm, pixel_shuffle_up=True)[0], file=INT8_SOURCE)
        report = _export_into(cfg, specs, tmp, data, quantize, calib_count, tolerance, threads, to_quantize)
        atomic_write_json(tmp / EXPORT_JSON, report)
        _move_into_place(tmp, out_dir, [*report["files"], EXPORT_JSON])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = ", ".join([*report["files"], EXPORT_JSON])
    print(f"ONNX export of {cfg.name} written to {out_dir}: {names}")
    return report


def _export_checked(cfg, spec: GraphSpec, tmp: Path, data: _Data, tolerance, threads):
    """Export one graph into tmp and check it against PyTorch: (files written, max abs differences,
    output scales, input source)."""
    inputs, source = _inputs_for(cfg, spec.kind, data, max(PARITY_BATCHES))
    if source == "random":
        print(f"  note: {spec.file} parity on RANDOM inputs: held-out data unavailable ({data.error})")
    example = tuple(inputs[n][:2] for n in spec.input_names)  # batch 2: no 0/1 specialisation
    written = _export_graph(spec, example, tmp / spec.file, build_metadata(cfg, spec))
    sess = _ort_session(tmp / spec.file, threads)
    checks = {f"batch_{b}": (inputs, b, source) for b in PARITY_BATCHES}
    if spec.kind == "segmentation":  # dynamic H/W: a non-square size the model was not traced at
        step = 2 ** int(cfg.model.get("depth", 4))
        h, w = int(cfg.image_size) + step, int(cfg.image_size)
        g = torch.Generator().manual_seed(5)
        checks[f"batch_1_{h}x{w}"] = ({"image": torch.randn(1, 3, h, w, generator=g)}, 1, "random")
    parity, scales = {}, {}
    for key, (inp, b, src) in checks.items():
        diff, scale = _parity(spec, sess, inp, b)
        parity[key], scales[key] = diff, scale
        ok = diff <= tolerance * scale
        print(f"  {spec.file} {key.replace('_', ' ')}: max |ORT - PyTorch| = {diff:.3g}, bound "
              f"{tolerance:g} x {scale:.3g} ({src} inputs) {'ok' if ok else 'FAILED'}")
        if not ok:
            raise UserError(f"ONNX parity check failed for {spec.file} at {key.replace('_', ' ')}: max abs "
                            f"difference {diff:.3g} > tolerance {tolerance:g} x output scale {scale:.3g} "
                            f"(max(1, max |PyTorch output|)); nothing was written")
    return written, parity, scales, source


def _export_into(cfg, specs: list[GraphSpec], tmp: Path, data: _Data, quantize, calib_count, tolerance,
                 threads, to_quantize: GraphSpec | None = None) -> dict:
    """specs are exported and shipped; to_quantize (default specs[0]) is the graph int8 is made from."""
    files: dict[str, dict] = {}
    parity: dict[str, dict[str, float]] = {}
    scales: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    print(f"Exporting {cfg.name} ({cfg.task}, config {cfg.hash()}) to ONNX opset {OPSET}")
    for spec in specs:
        written, parity[spec.file], scales[spec.file], sources[spec.file] = _export_checked(
            cfg, spec, tmp, data, tolerance, threads)
        for p in written:
            files[p.name] = {"graph": spec.kind, "precision": "fp32", "bytes": p.stat().st_size}
        files[spec.file].update({"inputs": {n: spec.inputs_doc[n] for n in spec.input_names},
                                 "output": {spec.output_name: spec.output_doc}})
    int8: dict[str, Any] | None = None
    if quantize == "int8":
        source = to_quantize or specs[0]  # model.onnx (UNet) or swap.onnx (CVAE); the decoder stays fp32
        if to_quantize is not None:       # a rewritten fp32 graph, checked like the others, not shipped
            _, parity[source.file], scales[source.file], sources[source.file] = _export_checked(
                cfg, source, tmp, data, tolerance, threads)
        name = specs[0].file.replace(".onnx", ".int8.onnx")
        int8 = _int8(cfg, source, tmp / source.file, tmp / name, data, calib_count, threads)
        int8["graph_rewrites"] = {k: REWRITES[k] for k in source.rewrites}
        files[name] = {"graph": source.kind, "precision": "int8", "bytes": (tmp / name).stat().st_size}
    return {
        "experiment": cfg.name, "config_hash": cfg.hash(), "task": cfg.task, "opset": OPSET,
        "torch_version": torch.__version__, "onnxruntime_version": _ort_version(),
        "files": files, "tolerance": tolerance, "parity": parity, "parity_scale": scales,
        "parity_inputs": sources,
        "valid_sizes": build_metadata(cfg, specs[0])["valid_sizes"],
        "graph_rewrites": {k: REWRITES[k] for k in specs[0].rewrites},
        "int8": int8,
    }


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
