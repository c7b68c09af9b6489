"""Per-layer int8 error: how much each quantized node of a QDQ graph adds to the error against fp32.

ONNX Runtime's QDQ debugging utilities (onnxruntime.quantization.qdq_loss_debug) make every float
tensor of a graph an output; both graphs, the fp32 source and its QDQ int8 copy, are run on the same
inputs (calibration images) and each tensor is compared by NAME: the quantizer keeps the float names
(an op's output `conv2d_3` is `conv2d_3` in both graphs, its int8 form is `conv2d_3_QuantizeLinear_Output`).

For a quantized node N with float inputs X_i and output Y (as tensors of the fp32 graph):

    err(T)   = ||T_int8 - T_fp32|| / ||T_fp32||          relative L2 error over all inputs
    added(N) = err(Y) - max_i err(X_i)                  X_i as N reads them: after their Q/DQ pair

`added` is what keeping N in fp32 (nodes_to_exclude) removes, to first order: its weights' quantization
and its int8 compute. Its inputs' own quantization is NOT counted: ORT keeps the Q/DQ pair of a tensor
that a quantized producer writes, whoever reads it, so excluding N alone would not remove it (that
error shows in err_in of the readers). The errors are accumulated
batch by batch (sums of squares), so a large graph never holds every activation of every batch.
Also reported: ORT's SQNR (dB) of Y, int8 against fp32, 10 log10(||Y_fp32||^2 / ||Y_int8 - Y_fp32||^2).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

__all__ = ["layer_errors", "quantized_nodes", "module_of"]

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_SHAPE_ONLY = {"Shape", "Constant", "ConstantOfShape", "Unsqueeze", "Squeeze", "Reshape", "Expand", "Gather"}


def module_of(node) -> str:
    """The PyTorch module a node came from, as the dynamo exporter records it (node metadata
    `pkg.torch.onnx.name_scopes`: the module path, then the op's own name); "" for the top level and
    for nodes without it (Quantize/DequantizeLinear the quantizer added)."""
    import ast

    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":  # a Python list literal: ['', 'enc.0', 'enc.0.conv', 'conv2d']
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return ""
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def quantized_nodes(int8_model: onnx.ModelProto) -> list:
    """Nodes of a QDQ graph that compute on dequantized data (an input comes from a DequantizeLinear),
    Q/DQ and shape-only ops excluded: the candidates for nodes_to_exclude."""
    dq_outputs = {o for n in int8_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n for n in int8_model.graph.node
            if n.op_type not in _QDQ and n.op_type not in _SHAPE_ONLY and any(i in dq_outputs for i in n.input)]


def _float_inputs(node, int8_model: onnx.ModelProto, fp32_names: set[str], weights: set[str]) -> list[tuple[str, str]]:
    """N's activation inputs as (int8-graph tensor N reads, the fp32-graph tensor it stands for): a
    DequantizeLinear output is traced back through its Q/DQ pair to the float tensor's name."""
    producer = {o: n for n in int8_model.graph.node for o in n.output}
    out = []
    for name in node.input:
        t = name
        while t in producer and producer[t].op_type in _QDQ:
            t = producer[t].input[0]
        if t in fp32_names and t not in weights:
            out.append((name, t))
    return out


def _same_source(fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto, fp32_path: Path, int8_path: Path) -> None:
    """Tensors are compared by name, and names are only meaningful between an int8 graph and the fp32 graph
    it was quantized from: a rewritten source (e.g. ConvTranspose as Conv + DepthToSpace) numbers its nodes
    differently from the shipped fp32 graph. Both record their rewrites (metadata `graph_rewrites`)."""
    from models.errors import UserError

    def rewrites(m):
        return {p.key: p.value for p in m.metadata_props}.get("graph_rewrites")

    a, b = rewrites(fp32_model), rewrites(int8_model)
    if a is not None and b is not None and a != b:
        raise UserError(f"{int8_path.name} was quantized from a graph with rewrites {b}, {fp32_path.name} has {a}: "
                        "per-layer errors need the fp32 graph it was made from (export.json int8.from)")


def _augment(path: Path, out: Path) -> Path:
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    modify_model_output_intermediate_tensors(str(path), str(out))
    return out


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def layer_errors(fp32_path, int8_path, batches: Iterable[Mapping[str, np.ndarray]],
                 threads: int | None = None, workdir=None) -> list[dict]:
    """[{node, op, module, inputs, output, err_in, err_out, added, sqnr_db}] for every quantized node,
    most harmful first (largest `added`). batches: feed dicts (e.g. the calibration batches)."""
    import tempfile

    from onnxruntime.quantization import qdq_loss_debug

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_model = onnx.load(str(int8_path))
    fp32_model = onnx.load(str(fp32_path))
    _same_source(fp32_model, int8_model, fp32_path, int8_path)
    weights = {i.name for i in fp32_model.graph.initializer}
    fp32_names = {o for n in fp32_model.graph.node for o in n.output} | {i.name for i in fp32_model.graph.input}
    nodes = []
    for n in quantized_nodes(int8_model):
        outs = [o for o in n.output if o in fp32_names]
        if outs:
            nodes.append((n, _float_inputs(n, int8_model, fp32_names, weights), outs[0]))
    pairs = {(t, t) for _, _, t in nodes} | {p for _, ins, _ in nodes for p in ins}  # (int8 name, fp32 name)
    # ORT's quantizer folds a Relu into the QuantizeLinear after a Conv: the Conv then writes the Relu's
    # tensor name, unclamped (the Q/DQ pair's zero point clamps it). Compared with the fp32 Relu's output
    # as it is, every such UNet Conv read as ~100% wrong; the Relu is applied before comparing.
    fp32_op = {o: n.op_type for n in fp32_model.graph.node for o in n.output}
    relu_folded = {out for n, _, out in nodes if fp32_op.get(out) == "Relu" and n.op_type != "Relu"}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        sf = _session(_augment(fp32_path, Path(tmp) / "fp32.onnx"), threads)
        sq = _session(_augment(int8_path, Path(tmp) / "int8.onnx"), threads)
        diff2: dict[tuple, float] = dict.fromkeys(pairs, 0.0)
        ref2: dict[tuple, float] = dict.fromkeys(pairs, 0.0)
        suffix = getattr(qdq_loss_debug, "_TENSOR_SAVE_POSTFIX", "_ReshapedSavedOutput")  # a saved tensor's name
        for feed in batches:
            feed = dict(feed)
            f = dict(zip([o.name for o in sf.get_outputs()], sf.run(None, feed)))
            q = dict(zip([o.name for o in sq.get_outputs()], sq.run(None, feed)))
            for t in pairs:
                tq, tf = t
                a, b = f.get(tf + suffix, f.get(tf)), q.get(tq + suffix, q.get(tq))  # graph outputs are not re-saved
                if a is None or b is None:
                    continue
                if tq in relu_folded:
                    b = np.maximum(b, 0)
                a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
                diff2[t] += float(np.sum((b64 - a64) ** 2))
                ref2[t] += float(np.sum(a64 ** 2))

    def err(t):
        return math.sqrt(diff2[t] / ref2[t]) if ref2.get(t) else (0.0 if not diff2.get(t) else math.inf)

    rows = []
    for n, ins, out in nodes:
        e_in = max((err(p) for p in ins), default=0.0)
        e_out = err((out, out))
        d, r = diff2.get((out, out)), ref2.get((out, out))
        sqnr = 10 * math.log10(r / d) if d and r else None
        rows.append({"node": n.name, "op": n.op_type, "module": module_of(n), "inputs": [tf for _, tf in ins], "output": out,
                     "err_in": e_in, "err_out": e_out, "added": e_out - e_in, "sqnr_db": sqnr})
    rows.sort(key=lambda r: -r["added"])
    return rows
