"""ONNX Runtime post-training quantization (static int8) and an optional fp16 conversion.

int8 recipe (measured fastest on this machine's CPU, see shared/notes/environment.md):
QDQ format, per-channel weights, U8 activations + S8 weights (S8S8 ran about half as fast),
MinMax calibration on REAL training images fed by a `CalibrationDataReader`.

`quant_pre_process(..., skip_symbolic_shape=True)` runs first: symbolic shape inference fails on
our dynamic-batch graphs. ORT's quantization tools drop temporary files in the current directory,
so they run after a chdir into a temporary directory (restored in a finally).

fp16 (`convert_fp16`) only pays off on CUDA execution providers; on this CPU ORT fp16 is no faster
than fp32. A bf16 ONNX graph does not load on the CPU EP at all (no bf16 Conv kernel).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from models.errors import UserError

__all__ = ["QuantResult", "quantize_int8", "fp32_ops", "node_precisions", "optimized_graph", "convert_fp16",
           "ListReader", "QuantOptions"]

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_INT8_KERNELS = {"QGemm", "QAttention", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
                 "DynamicQuantizeMatMul", "NhwcMaxPool", "QLinearConv"}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


@dataclass
class QuantResult:
    path: Path
    fp32_ops: dict[str, int] = field(default_factory=dict)    # op type -> count still computing in float
    int8_ops: dict[str, int] = field(default_factory=dict)    # op type -> count running int8 kernels
    calib_count: int = 0
    settings: dict = field(default_factory=dict)


@dataclass
class QuantOptions:
    """The int8 recipe's knobs, kept as export options so that each can be measured (issue 26) and the
    instruction-set-dependent choices (reduce_range without VNNI, issue 25) can be set by the caller.

    per_channel: one scale per output channel of each weight. activations/weights: "QUInt8" | "QInt8"
    (U8S8 is the fast pair on x86; S8S8 ran about half as fast here). reduce_range: 7-bit weights,
    which avoids the U8S8 saturation of VPMADDUBSW on CPUs without VNNI. op_types: the op types to
    quantize (None: every type ORT can). nodes_to_exclude: node names kept in fp32 (the accuracy-aware
    fallback's list)."""
    per_channel: bool = True
    activations: str = "QUInt8"
    weights: str = "QInt8"
    reduce_range: bool = False
    op_types: tuple[str, ...] | None = None
    nodes_to_exclude: tuple[str, ...] = ()

    def settings(self) -> dict:
        return {"format": "QDQ", "per_channel": self.per_channel, "activations": self.activations,
                "weights": self.weights, "reduce_range": self.reduce_range,
                "op_types": list(self.op_types) if self.op_types is not None else "all",
                "nodes_to_exclude": list(self.nodes_to_exclude), "calibration": "MinMax"}


@contextlib.contextmanager
def _in_tempdir(prefix: str = "ort-quant-"):
    """chdir into a fresh temp dir (ORT's tools write scratch files into the CWD); always restore."""
    old = os.getcwd()
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        os.chdir(tmp)
        yield Path(tmp)
    finally:
        os.chdir(old)
        shutil.rmtree(tmp, ignore_errors=True)


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader
    return CalibrationDataReader


class ListReader(_reader_base()):
    """CalibrationDataReader over an iterable of feed dicts (name -> ndarray), one batch per call."""

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]]):
        self._batches = [dict(b) for b in batches]
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._batches)

    @property
    def count(self) -> int:
        return sum(next(iter(b.values())).shape[0] for b in self._batches) if self._batches else 0


def quantize_int8(fp32_path, out_path, calib_batches: Iterable[Mapping[str, np.ndarray]],
                  per_channel: bool = True, metadata: Mapping[str, str] | None = None,
                  reduce_range: bool = False, options: QuantOptions | None = None) -> QuantResult:
    """Static QDQ int8 (default: U8 activations, S8 per-channel weights) of fp32_path into out_path.

    calib_batches: feed dicts of REAL inputs (e.g. 128 training images in batches). The fp32
    model's metadata_props are copied, updated with `metadata` (e.g. precision=int8).
    reduce_range: 7-bit weights, ONNX Runtime's remedy for U8S8 saturation on CPUs without VNNI.
    Returns the path and the op types that still compute in float once ORT has fused the Q/DQ pairs.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    reader = ListReader(calib_batches)
    if reader.count == 0:
        raise UserError("int8 quantization needs calibration inputs (got none)")
    opts = options or QuantOptions(per_channel=per_channel, reduce_range=reduce_range)
    settings = {**opts.settings(), "pre_process": "quant_pre_process(skip_symbolic_shape=True)"}
    with _in_tempdir() as tmp:
        pre = tmp / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # pre-processing is an optimisation: quantize the original if it fails
            print(f"  note: quant_pre_process failed ({type(e).__name__}: {e}); quantizing the graph as exported")
            settings["pre_process"] = f"skipped ({type(e).__name__})"
            pre = fp32_path
        q = tmp / "q.onnx"
        quantize_static(str(pre), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=opts.per_channel,
                        activation_type=getattr(QuantType, opts.activations),
                        weight_type=getattr(QuantType, opts.weights), reduce_range=opts.reduce_range,
                        op_types_to_quantize=list(opts.op_types) if opts.op_types is not None else None,
                        nodes_to_exclude=list(opts.nodes_to_exclude), calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(q))
    src_meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    src_meta.update({k: str(v) for k, v in (metadata or {}).items()})
    del model.metadata_props[:]
    for k, v in src_meta.items():
        model.metadata_props.add(key=k, value=v)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    left, int8 = fp32_ops(out_path)
    return QuantResult(out_path, left, int8, reader.count, settings)


def optimized_graph(model_path, level: str = "all") -> onnx.ModelProto:
    """The graph as ONNX Runtime's CPU provider RUNS it: loaded at optimization `level`, saved and read
    back (Q/DQ pairs fused into QLinearConv, QGemm, ...; NCHWc and layout Transposes inserted)."""
    import onnxruntime as ort
    from exports.session import OPT_LEVELS

    model_path = Path(model_path).resolve()
    with _in_tempdir("ort-opt-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = OPT_LEVELS[level]
        so.optimized_model_filepath = str(tmp / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])
        return onnx.load(str(tmp / "optimized.onnx"))


def node_precisions(model: onnx.ModelProto) -> dict[str, str | None]:
    """node name -> "fp32" (a float tensor enters or leaves it), "int8" (only 8-bit data: QLinear*,
    QGemm, ...) or None (Quantize/DequantizeLinear, layout Transposes, shape arithmetic) in an
    optimized graph (see optimized_graph)."""
    g = model.graph
    elem: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        elem[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        elem[init.name] = init.data_type
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    out: dict[str, str | None] = {}
    for n in g.node:
        if n.op_type in _QDQ or n.op_type in ("Constant", "Transpose"):  # Transpose: NHWC layout moves
            out[n.name] = None
            continue
        first_in = elem.get(n.input[0]) if n.input and n.input[0] else None
        first_out = elem.get(n.output[0]) if n.output else None
        if n.op_type.startswith("QLinear") or n.op_type in _INT8_KERNELS or first_in in eight_bit:
            out[n.name] = "int8"       # (their scales are float inputs, their data is 8-bit)
        elif first_in in _FLOAT_TYPES or first_out in _FLOAT_TYPES:
            out[n.name] = "fp32"
        else:
            out[n.name] = None
    return out


def fp32_ops(model_path, level: str = "all") -> tuple[dict[str, int], dict[str, int]]:
    """(ops that still compute in float, ops that compute in int8) by op type, as ONNX Runtime RUNS the model.

    ORT fuses DequantizeLinear -> op -> QuantizeLinear into QLinearConv, QLinearSigmoid, QGemm, ...
    where it has an int8 kernel; an op without one (e.g. ConvTranspose, Exp, Resize) stays between DQ
    and Q and runs in fp32 (node_precisions says which is which; shape arithmetic is not counted).
    """
    model = optimized_graph(model_path, level)
    kinds = node_precisions(model)
    left, quantized = Counter(), Counter()
    for n in model.graph.node:
        if kinds.get(n.name) == "int8":
            quantized[n.op_type] += 1
        elif kinds.get(n.name) == "fp32":
            left[n.op_type] += 1
    return dict(left), dict(quantized)


def convert_fp16(path, out) -> Path:
    """fp16 copy of an fp32 ONNX model (inputs/outputs stay float32, metadata precision "fp16").

    Uses the converter shipped with onnxruntime (onnxruntime.transformers.float16). fp16 is meant
    for CUDA execution providers; on this CPU ORT fp16 is no faster than fp32 (many kernels fall
    back through Casts), but it runs there, which is where its parity is checked.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    half = convert_float_to_float16(model, keep_io_types=True)
    for p in half.metadata_props:
        if p.key == "precision":
            p.value = "fp16"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out))
    return out
