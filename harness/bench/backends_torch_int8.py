"""torch-int8: PyTorch's own best int8 path on the CPU, the reference ORT int8 is measured against.

PT2E static quantization (torchao.quantization.pt2e) with the x86 inductor quantizer's default
config (activations uint8 per tensor, weights int8 per channel, symmetric), then torch.compile with
inductor freezing, which lowers the quantize/dequantize pattern around each conv to oneDNN's int8
convolution (onednn::qconv_pointwise). It runs the graph ORT int8 runs: the UNet with the same
rewrites (BatchNorm folded, ConvTranspose as 1x1 Conv + pixel shuffle; the CVAE decoder's
ConvTranspose2d(4, 2, 1) as a 3x3 Conv + pixel shuffle), calibrated on the same
training images (harness.export_data.calibration_inputs with the count and seed RUN/onnx/export.json
recorded for ORT int8), and is gated on accuracy like every backend.

On a CPU without VNNI (AVX2 only) oneDNN still runs real int8 kernels (vpmaddubsw), not an
emulation; the bench's figures say how fast that is on the machine at hand.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.bench.backends_torch import TorchCompile
from harness.bench.backend_base import INPUT_NAMES

QUANTIZER = ("PT2E, torchao X86InductorQuantizer default config: static, activations uint8 per tensor "
             "(HistogramObserver), weights int8 per channel (symmetric)")


def _pt2e():
    """(prepare_pt2e, convert_pt2e, X86InductorQuantizer, default config) from torchao (torch >= 2.10 moved
    PT2E there) or, on an older torch, from torch.ao."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError:
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torch.ao.quantization.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    return prepare_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


def int8_settings(run_dir) -> dict:
    """ORT int8's calibration (count, seed) and reduce_range, as RUN/onnx/export.json recorded them
    ({"count", "seed", "reduce_range", "from"}); export's defaults when it recorded none."""
    from harness.export_data import CALIBRATION_SEED
    from harness.run_folder import EXPORT_FILE, ONNX_DIR

    path = Path(run_dir) / ONNX_DIR / EXPORT_FILE
    try:
        int8 = json.loads(path.read_text()).get("int8") or {}
    except (OSError, ValueError):
        int8 = {}
    drawn, isa = int8.get("calibration") or {}, int8.get("isa") or {}
    reduce_range = bool(isa.get("reduce_range", False))
    if "count" in drawn and "seed" in drawn:
        return {"count": int(drawn["count"]), "seed": int(drawn["seed"]), "reduce_range": reduce_range,
                "from": f"{path.name}: ORT int8's calibration set and reduce_range"}
    return {"count": 128, "seed": CALIBRATION_SEED, "reduce_range": reduce_range,
            "from": f"export's defaults ({path.name} records no class-stratified int8 calibration)"}


def up4_form(run_dir) -> str:
    """The form of the CVAE decoder's ConvTranspose2d(4, 2, 1) in ORT int8's graph, as RUN/onnx/export.json
    records its rewrites (`segvae export --int8-up4`): "conv2x2" or, by default, "conv3x3"."""
    from exports.onnx_export import UP4_REWRITES
    from harness.run_folder import EXPORT_FILE, ONNX_DIR
    from models.rewrites import DEFAULT_UP4

    try:
        done = (json.loads((Path(run_dir) / ONNX_DIR / EXPORT_FILE).read_text()).get("int8") or {}).get("graph_rewrites")
    except (OSError, ValueError, AttributeError):
        done = None
    return next((form for form, key in UP4_REWRITES.items() if key in (done or {})), DEFAULT_UP4)


class TorchInt8(TorchCompile):
    name, precision = "torch-int8", "int8"
    library = "onednn"  # harness.hardware: its convs are oneDNN's u8s8 kernels (native on AVX2), not torch._int_mm
    graph_options = {"pixel_shuffle_up": True}  # the graph ORT int8 is made from (export's default form)

    @classmethod
    def available(cls, device):
        if device.kind != "cpu":
            return False, "the x86 inductor quantizer targets the CPU (oneDNN int8 kernels); run with --device cpu"
        try:
            _pt2e()
        except ImportError as e:
            return False, f"PT2E quantization not importable (pip install torchao): {e}"
        return super().available(device)

    def load(self, job: dict, threads: int, device) -> None:
        self.graph_options = {**self.graph_options, "convtranspose4": up4_form(job["run_dir"])}  # as ORT int8's
        super().load(job, threads, device)

    def _transform(self, net, job: dict):
        """PT2E: export with a dynamic batch, insert observers, calibrate, convert to quantize/dequantize."""
        import torch

        from harness.export_data import CALIBRATION_BATCH, ExportData, calibration_inputs

        prepare_pt2e, convert_pt2e, Quantizer, default_config = _pt2e()
        want = int8_settings(job["run_dir"])
        calib, drawn = calibration_inputs(self.cfg, ExportData(self.cfg, job.get("data_root")), want["count"], want["seed"])
        self.calibration = {**drawn, "reduce_range": want["reduce_range"], "settings_from": want["from"]}
        names = INPUT_NAMES[self.task]
        batch = torch.export.Dim("batch", min=1)
        example = tuple(calib[k][:CALIBRATION_BATCH] for k in names)
        exported = torch.export.export(net, example, dynamic_shapes=tuple({0: batch} for _ in names)).module()
        quantizer = Quantizer()
        # reduce_range as ORT int8 got it (no VNNI: 7-bit activations keep vpmaddubsw's pair sums from saturating)
        quantizer.set_global(default_config(reduce_range=want["reduce_range"]))
        observed = prepare_pt2e(exported, quantizer)
        n = len(calib[names[0]])
        with torch.no_grad():
            for lo in range(0, n, CALIBRATION_BATCH):
                observed(*(calib[k][lo:lo + CALIBRATION_BATCH] for k in names))
        return convert_pt2e(observed)

    @property
    def form(self) -> dict:
        c = self.calibration
        return {**super().form, "quantization": QUANTIZER + (", reduce_range (activations 0-127)" if c["reduce_range"] else ""),
                "calibration": f"{c['count']} {c['source']} images, {c['sampler']}, seed {c['seed']}, classes "
                               f"{c['classes']} ({c['settings_from']})"}
