"""Graph tooling for ONNX export: what each graph of a run is, its metadata, torch -> ONNX, and the
parity checks against PyTorch on ONNX Runtime's CPU provider. The run-level stage (which run, which
data, int8 calibration, export.json) is harness/export_stage.py; nothing here imports harness.

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
  *.fp16.onnx (optional): the same graph with fp16 weights and compute, float32 inputs and outputs,
  meant for ONNX Runtime's CUDA provider.

Every file carries metadata_props (string values, lists/objects JSON-encoded): experiment, variant,
graph, precision, normalization/mean/std, image_size, valid_sizes, class_names, mask_rule, output,
num_classes, latent_dim, config_hash, onnx_opset, torch_version, ... Nothing from the environment.

Parity: ONNX Runtime's CPU provider (never a GPU provider, whose TF32 defaults would not meet 1e-4)
against PyTorch fp32 on the CPU. The bound is `tolerance` x max(1, max |PyTorch output|) (fp32 error
grows with the output's magnitude): 1e-4 for fp32 graphs, FP16_TOLERANCE for fp16 ones.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from models.errors import UserError
from models.rewrites import DEFAULT_UP4

OPSET = 18
PARITY_BATCHES = (1, 7)
FP16_TOLERANCE = 1e-2  # fp16 has an 11-bit mantissa (~5e-4 relative per op); errors add up over ~20 layers
EXTERNAL_DATA_LIMIT = int(1.5 * 2**30)  # bytes of weights above which they go to <file>.data beside it

__all__ = ["GraphSpec", "graph_specs", "build_metadata", "export_graph", "parity", "parity_checks",
           "check_parity", "export_checked", "fp16_checked", "OPSET", "FP16_TOLERANCE", "REWRITES", "UP4_REWRITES"]


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
    # the CVAE decoder's ConvTranspose2d(4, 2, 1): models.rewrites.SubpixelUp4, form conv3x3 or conv2x2
    "subpixel_up4": "ConvTranspose2d(4, stride 2, padding 1) as a 3x3 Conv to 4*cout channels + DepthToSpace "
                    "(2.25x the MACs), so the int8 graph holds no fp32 ConvTranspose (int8 graph only)",
    "subpixel_up4_2x2": "ConvTranspose2d(4, stride 2, padding 1) as a 2x2 Conv (padding 1) to 4*cout channels, "
                        "a crop per output phase + DepthToSpace (the ConvTranspose's MACs), so the int8 graph "
                        "holds no fp32 ConvTranspose (int8 graph only)",
}
UP4_REWRITES = {"conv3x3": "subpixel_up4", "conv2x2": "subpixel_up4_2x2"}  # SubpixelUp4 form -> REWRITES key


def graph_specs(cfg, model: torch.nn.Module, fold_batchnorm: bool = True,
                pixel_shuffle_up: bool = False, convtranspose4: str = DEFAULT_UP4) -> list[GraphSpec]:
    """The graphs of one run. UNets are exported in `models.unet.inference_form` (same function,
    checked against the trained module) with the rewrites asked for. pixel_shuffle_up: the transposed
    convs as Conv + DepthToSpace (the graph that is quantized): the UNet's ConvTranspose2d(2, stride 2)
    (`pixel_shuffle_up`), the CVAE's ConvTranspose2d(4, stride 2, padding 1) in `models.cvae.inference_form`
    with form `convtranspose4` ("conv3x3" | "conv2x2": REWRITES `subpixel_up4` / `subpixel_up4_2x2`).
    fold_batchnorm applies to UNets only (the CVAE has no BatchNorm)."""
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
    from models.cvae import Decoder, LabelSwap, inference_form

    c, s, k = int(cfg.model["in_channels"]), int(cfg.model["image_size"]), cfg.num_classes
    latent = int(cfg.model["latent_dim"])
    if convtranspose4 not in UP4_REWRITES:
        raise UserError(f"convtranspose4 must be one of {', '.join(UP4_REWRITES)}, got {convtranspose4!r}")
    model = model.eval()
    deployed, rewrites = model, ()
    if pixel_shuffle_up:  # the trained model stays the parity reference
        deployed, rewrites = inference_form(model, convtranspose4), (UP4_REWRITES[convtranspose4],)
    return [
        GraphSpec("swap.onnx", "swap", LabelSwap(deployed).eval(), ["image", "label", "new_label", "eps"], "generated",
                  ({0: batch}, {0: batch}, {0: batch}, {0: batch}),
                  {"image": f"float32 [N,{c},{s},{s}] in [0,1]",
                   "label": f"int64 [N] true class in [0,{k})",
                   "new_label": f"int64 [N] class to generate in [0,{k})",
                   "eps": f"float32 [N,{latent}] standard normal noise (z = mu + sigma * eps)"},
                  f"float32 [N,{c},{s},{s}] in [0,1]: the decoder mean for (encode(image, label) sampled "
                  "with eps, new_label)", reference=LabelSwap(model).eval(), rewrites=rewrites),
        GraphSpec("decoder.onnx", "decoder", Decoder(deployed).eval(), ["z", "label"], "generated",
                  ({0: batch}, {0: batch}),
                  {"z": f"float32 [N,{latent}] latent (standard normal for sampling from the prior)",
                   "label": f"int64 [N] class in [0,{k})"},
                  f"float32 [N,{c},{s},{s}] in [0,1]: the decoder mean for (z, label)",
                  reference=Decoder(model).eval(), rewrites=rewrites),
    ]


def build_metadata(cfg, spec: GraphSpec, dataset: Mapping[str, Any], precision: str = "fp32") -> dict[str, str]:
    """The metadata_props of one graph: strings only (lists/objects/null as JSON).

    dataset: what the data layer says about the run's dataset: class_names, and for UNets the
    normalisation mean/std and mask_rule (harness.export_stage.dataset_info)."""
    names = list(dataset["class_names"])
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
            "normalization": "imagenet", "mean": list(dataset["mean"]), "std": list(dataset["std"]),
            "preprocess": "RGB; resize to image_size x image_size (bilinear); /255; (x - mean) / std; NCHW",
            "image_size": int(cfg.image_size), "in_channels": int(cfg.model.get("in_channels", 3)),
            "depth": depth, "size_multiple": step,
            "valid_sizes": f"batch N >= 1; height and width any positive multiples of {step} (2**depth, "
                           f"depth={depth}); trained at {cfg.image_size}x{cfg.image_size}",
            "mask_rule": dataset["mask_rule"], "num_classes": len(names), "latent_dim": None,
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
def export_graph(spec: GraphSpec, example: tuple, path: Path, metadata: dict[str, str]) -> list[Path]:
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


# ---------------------------------------------------------------------------- parity against PyTorch
def cpu_session(path: Path, threads):
    """The parity reference runs on ONNX Runtime's CPU provider, whatever the machine offers."""
    from exports.session import OrtSession
    return OrtSession(path, threads=threads, device="cpu")


@torch.no_grad()
def parity(spec: GraphSpec, sess, inputs: Mapping[str, torch.Tensor], b: int) -> tuple[float, float]:
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


def parity_checks(cfg, spec: GraphSpec, inputs: dict[str, torch.Tensor], source: str) -> dict[str, tuple]:
    """name -> (inputs, batch, source): batches 1 and 7 of the given inputs and, for UNets (dynamic
    H/W), a non-square size the model was not traced at."""
    checks = {f"batch_{b}": (inputs, b, source) for b in PARITY_BATCHES}
    if spec.kind == "segmentation":
        step = 2 ** int(cfg.model.get("depth", 4))
        h, w = int(cfg.image_size) + step, int(cfg.image_size)
        g = torch.Generator().manual_seed(5)
        checks[f"batch_1_{h}x{w}"] = ({"image": torch.randn(1, 3, h, w, generator=g)}, 1, "random")
    return checks


def check_parity(spec: GraphSpec, sess, checks: dict[str, tuple], tolerance: float,
                 file: str | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Every check within tolerance x scale, else UserError. Returns (max differences, scales)."""
    file = file or spec.file
    diffs, scales = {}, {}
    for key, (inp, b, src) in checks.items():
        diff, scale = parity(spec, sess, inp, b)
        diffs[key], scales[key] = diff, scale
        ok = diff <= tolerance * scale
        print(f"  {file} {key.replace('_', ' ')}: max |ORT - PyTorch| = {diff:.3g}, bound "
              f"{tolerance:g} x {scale:.3g} ({src} inputs) {'ok' if ok else 'FAILED'}")
        if not ok:
            raise UserError(f"ONNX parity check failed for {file} at {key.replace('_', ' ')}: max abs "
                            f"difference {diff:.3g} > tolerance {tolerance:g} x output scale {scale:.3g} "
                            f"(max(1, max |PyTorch output|)); nothing was written")
    return diffs, scales


def export_checked(cfg, spec: GraphSpec, folder: Path, checks: dict[str, tuple], metadata: dict[str, str],
                   tolerance: float, threads=None) -> tuple[list[Path], dict, dict]:
    """Export one graph into folder and check it against PyTorch: (files written, differences, scales)."""
    inputs = checks["batch_1"][0]
    example = tuple(inputs[n][:2] for n in spec.input_names)  # batch 2: no 0/1 specialisation
    written = export_graph(spec, example, folder / spec.file, metadata)
    diffs, scales = check_parity(spec, cpu_session(folder / spec.file, threads), checks, tolerance)
    return written, diffs, scales


def fp16_checked(spec: GraphSpec, fp32_path: Path, out_path: Path, checks: dict[str, tuple],
                 tolerance: float = FP16_TOLERANCE, threads=None) -> tuple[dict, dict]:
    """fp16 copy of a checked fp32 graph, itself checked against PyTorch fp32 on the CPU provider
    (fp16 graphs run there too, slowly) within tolerance x scale. Returns (differences, scales)."""
    from exports.quantize import convert_fp16

    convert_fp16(fp32_path, out_path)
    return check_parity(spec, cpu_session(out_path, threads), checks, tolerance, file=out_path.name)
