"""A small ONNX Runtime session wrapper: sensible CPU threading, decoded metadata, input checks.

Uses only onnxruntime and numpy (no torch, no onnx), so deployment code and `segvae predict`
can use it on a machine without PyTorch.

    sess = OrtSession("runs/unet-mp-tr-bce/onnx/model.onnx")
    sess.metadata["image_size"], sess.inputs["image"]     # -> 128, ([None, 3, None, None], float32)
    logits = sess(image=x)                               # first output as an ndarray
    outs = sess.run({"image": x})                        # {output name: ndarray}
    gpu = OrtSession(path, device="cuda:0")               # CUDA provider (TensorRT first if present)
    bound = gpu.bind({"image": x}); bound.run()          # IO binding: inputs/outputs stay on the GPU
    logits = bound.outputs()[0]                          # copied back only when asked

Inputs are checked BEFORE ONNX Runtime sees them and mistakes raise `UserError` naming the input
and what was expected: unknown/missing names, rank, dtype (no silent casts), fixed dimensions
(e.g. channels), inconsistent batch sizes, UNet height/width that are not multiples of
2**depth (metadata `size_multiple`), and labels outside [0, num_classes).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from exports.providers import parse_device, provider_names, providers_for
from models.errors import UserError

__all__ = ["OrtSession", "Bound", "decode_metadata", "OPT_LEVELS"]

OPT_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

# ONNX tensor type strings as ORT reports them -> numpy dtypes
_ORT_TYPES = {
    "tensor(float)": np.dtype(np.float32), "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16), "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32), "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8), "tensor(bool)": np.dtype(np.bool_),
}
# metadata keys whose (string) values are integers; lists/objects/null are JSON-decoded by their look
INT_KEYS = frozenset({"image_size", "num_classes", "latent_dim", "onnx_opset", "size_multiple",
                      "in_channels", "depth"})
# metadata keys always kept as strings (e.g. normalization "[0,1]" is a description, not a list)
STRING_KEYS = frozenset({"normalization", "experiment", "config_hash", "torch_version", "precision", "graph",
                         "output", "valid_sizes", "mask_rule", "preprocess", "producer", "task", "dataset"})
_LABEL_INPUTS = ("label", "new_label")


def decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """metadata_props strings -> Python values: JSON lists/objects/null/booleans decoded, INT_KEYS as int,
    STRING_KEYS and anything else (names, hashes, versions, descriptions) kept as the string it is."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        v: Any = value
        text = value.strip()
        if key in STRING_KEYS and text != "null":
            out[key] = value
            continue
        try:
            if text[:1] in ("[", "{") or text in ("null", "true", "false"):
                v = json.loads(text)
            elif key in INT_KEYS:
                v = int(text)
        except (ValueError, json.JSONDecodeError):
            v = value
        out[key] = v
    return out


def _external_locations(path: Path) -> list[str]:
    """Names of external data files referenced by an .onnx file, read straight from its protobuf bytes.

    An external tensor carries a StringStringEntryProto {key: "location", value: <file>}; its
    serialisation is b"\\n\\x08location\\x12" + varint length + value. Scanning for it needs no onnx import.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return []
    found: list[str] = []
    for m in re.finditer(rb"\n\x08location\x12", data):
        i, shift, n = m.end(), 0, 0
        while i < len(data):  # varint
            b = data[i]
            n |= (b & 0x7F) << shift
            i += 1
            shift += 7
            if not b & 0x80:
                break
        name = data[i:i + n].decode("utf-8", "replace")
        if name and name not in found:
            found.append(name)
    return found


class OrtSession:
    """onnxruntime.InferenceSession with threading defaults, metadata and checked inputs.

    threads: intra-op threads (default os.cpu_count()); inter-op is 1 and the session runs its
    graph sequentially. spinning=False sets `session.intra_op.allow_spinning` to "0" so idle ORT
    threads do not busy-wait and fight PyTorch (or another session) for the cores.
    providers: default = every available execution provider, CPU last.
    device: "cpu" | "cuda:N" instead of providers (see exports.providers.providers_for); when the
    GPU cannot be used the session runs on the CPU, prints why and keeps it in `fallback`;
    require_device=True makes that a UserError. `device` is where the session really runs.
    tensorrt: for CUDA devices, None = TensorRT first when its libraries load, False = CUDA only.
    graph_optimization: "all" | "extended" | "basic" | "disable".
    profile: True (or a file prefix) enables ORT's JSON profiler; `end_profiling()` returns its path.
    """

    def __init__(self, path, threads: int | None = None, providers: list[str] | None = None,
                 graph_optimization: str = "all", spinning: bool = False, profile: bool | str = False,
                 device: str | None = None, tensorrt: bool | None = None, require_device: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX model not found: {self.path}")
        if graph_optimization not in OPT_LEVELS:
            raise UserError(f"invalid graph_optimization {graph_optimization!r}: expected one of {', '.join(OPT_LEVELS)}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise UserError(f"invalid threads={threads!r}: expected a positive integer")
        self.threads = int(threads or os.cpu_count() or 1)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = OPT_LEVELS[graph_optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        so.log_severity_level = 3  # errors only; warnings about unused initializers etc. are noise
        if profile:
            so.enable_profiling = True
            if isinstance(profile, str):
                so.profile_file_prefix = profile
        self._select_providers(providers, device, tensorrt, require_device)
        self._session = self._load(so)
        self._check_device(require_device)
        self.metadata: dict[str, Any] = decode_metadata(self._session.get_modelmeta().custom_metadata_map)
        self.inputs: dict[str, tuple[list, np.dtype]] = {
            i.name: (list(i.shape), _ORT_TYPES.get(i.type, i.type)) for i in self._session.get_inputs()}
        self.outputs: dict[str, tuple[list, np.dtype]] = {
            o.name: (list(o.shape), _ORT_TYPES.get(o.type, o.type)) for o in self._session.get_outputs()}
        self.output_names = list(self.outputs)

    # ------------------------------------------------------------------ loading
    def _select_providers(self, providers, device, tensorrt, require_device) -> None:
        if providers and device is not None:
            raise UserError("give either providers or device, not both")
        self.fallback: str | None = None
        if providers:
            self._providers, self.device = list(providers), None
            return
        self._providers, note = providers_for(device, tensorrt)
        self.device = None if device is None else ("cpu" if provider_names(self._providers) == ["CPUExecutionProvider"]
                                                   else "cuda:%d" % parse_device(device)[1])
        if note:
            self._fallback(note, require_device)

    def _fallback(self, note: str, require_device: bool) -> None:
        if require_device:
            raise UserError(note)
        print(f"  note: {note}; running on {self.device}")
        self.fallback = note

    def _check_device(self, require_device: bool) -> None:
        """ORT drops a provider whose libraries fail to load (CUDA, cuDNN) with a log line only: compare
        what runs with what was asked, so that a CUDA session never runs on the CPU unnoticed."""
        asked = [p for p in provider_names(self._providers) if p != "CPUExecutionProvider"]
        running = self._session.get_providers()
        if self.device is None:  # providers given (or the build's default): where does it run?
            cuda = self._session.get_provider_options().get("CUDAExecutionProvider")
            self.device = f"cuda:{int(cuda.get('device_id', 0))}" if cuda is not None else "cpu"
        lost = [p for p in asked if p not in running]
        if not lost:
            return
        if "CUDAExecutionProvider" in lost and self.device and self.device.startswith("cuda"):
            self.device = "cpu"
        self._fallback(f"{', '.join(lost)} could not be loaded by onnxruntime {ort.__version__} (missing CUDA, "
                       f"cuDNN or TensorRT libraries? their names are in ORT's log); running with {running}",
                       require_device)

    @property
    def providers(self) -> list[str]:
        """The providers the session runs with, in priority order."""
        return self._session.get_providers()

    def _load(self, so: "ort.SessionOptions") -> "ort.InferenceSession":
        try:
            return ort.InferenceSession(str(self.path), sess_options=so, providers=self._providers)
        except Exception as e:  # ORT raises its own pybind exception types
            msg = str(e)
            # an external-data model whose data file is gone: name the file, ORT's message does not
            missing = [loc for loc in _external_locations(self.path) if not (self.path.parent / loc).is_file()]
            if missing:
                raise UserError(f"{self.path}: external weights file missing: {self.path.parent / missing[0]} "
                                "(keep the .onnx.data file beside the .onnx)") from None
            if "INVALID_PROTOBUF" in msg or "Protobuf parsing failed" in msg or "ModelProto" in msg:
                raise UserError(f"{self.path} is not a valid ONNX model (truncated or corrupt file?): "
                                "Protobuf parsing failed") from None
            raise UserError(f"{self.path} is not a valid ONNX model or cannot be loaded by onnxruntime "
                            f"{ort.__version__}: {msg.strip()[:500]}") from None

    # ------------------------------------------------------------------ checks
    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate and return the feed dict (arrays, no casts). Raises UserError on any mismatch."""
        if not isinstance(inputs, Mapping):
            raise UserError(f"inputs must be a mapping of input name -> array, got {type(inputs).__name__}")
        expected = list(self.inputs)
        unknown = [k for k in inputs if k not in self.inputs]
        if unknown:
            raise UserError(f"unknown input(s) {unknown} for {self.path.name}: expected {expected}")
        missing = [k for k in expected if k not in inputs]
        if missing:
            raise UserError(f"missing input(s) {missing} for {self.path.name}: expected {expected}")
        feed: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        step = self.metadata.get("size_multiple")
        for name, (shape, dtype) in self.inputs.items():
            arr = inputs[name]
            if not isinstance(arr, np.ndarray):
                if type(arr).__module__.startswith("torch"):
                    raise UserError(f"input {name!r}: expected a numpy array, got a torch tensor (use .numpy())")
                arr = np.asarray(arr)
            if arr.dtype != dtype:
                raise UserError(f"input {name!r}: expected {np.dtype(dtype).name}, got {arr.dtype.name}")
            if arr.ndim != len(shape):
                raise UserError(f"input {name!r}: expected rank {len(shape)} {self._shape_str(shape)}, "
                                f"got rank {arr.ndim} with shape {tuple(arr.shape)}")
            for axis, (want, got) in enumerate(zip(shape, arr.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise UserError(f"input {name!r}: dimension {axis}{self._axis_name(name, axis)} must be "
                                        f"{want}, got {got} (shape {tuple(arr.shape)}, expected {self._shape_str(shape)})")
                    continue
                if got < 1:
                    raise UserError(f"input {name!r}: dimension {axis} is {got} (expected at least 1)")
                if isinstance(want, str) and want:
                    if want in symbols and symbols[want][0] != got:
                        other, n = symbols[want][1], symbols[want][0]
                        raise UserError(f"input {name!r}: dimension {axis} ({want}) is {got} but input "
                                        f"{other!r} has {n} (expected the same)")
                    symbols.setdefault(want, (got, name))
                if step and arr.ndim == 4 and axis in (2, 3) and got % int(step):
                    raise UserError(f"input {name!r}: {'height' if axis == 2 else 'width'} {got} is not a multiple "
                                    f"of {step} (valid sizes: {self.metadata.get('valid_sizes', f'multiples of {step}')})")
            if name in _LABEL_INPUTS and arr.size and "num_classes" in self.metadata \
                    and isinstance(self.metadata["num_classes"], int):
                k = self.metadata["num_classes"]
                lo, hi = int(arr.min()), int(arr.max())
                if lo < 0 or hi >= k:
                    bad = lo if lo < 0 else hi
                    raise UserError(f"input {name!r}: label {bad} is outside [0, {k}) (expected class indices "
                                    f"0..{k - 1})")
            feed[name] = arr
        return feed

    def _axis_name(self, name: str, axis: int) -> str:
        if name == "image":
            return {0: " (batch)", 1: " (channels)", 2: " (height)", 3: " (width)"}.get(axis, "")
        if name in ("eps", "z") and axis == 1:
            return " (latent_dim)"
        return ""

    @staticmethod
    def _shape_str(shape) -> str:
        return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"

    # ------------------------------------------------------------------ running
    def run(self, inputs: Mapping[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        feed = self.check_inputs(inputs)
        names = outputs or self.output_names
        return dict(zip(names, self._session.run(names, feed)))

    def run_unchecked(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Straight to ORT (for timing loops that already validated their inputs once)."""
        return self._session.run(self.output_names, dict(feed))

    def bind(self, inputs: Mapping[str, Any]) -> "Bound":
        """Inputs checked once and copied to the session's device; see Bound."""
        return Bound(self, self.check_inputs(inputs))

    def __call__(self, **inputs) -> np.ndarray:
        return self.run(inputs, [self.output_names[0]])[self.output_names[0]]

    def end_profiling(self) -> str | None:
        return self._session.end_profiling()

    @property
    def session(self) -> "ort.InferenceSession":
        return self._session

    def __repr__(self) -> str:
        return (f"OrtSession({str(self.path)!r}, threads={self.threads}, providers={self.providers}, "
                f"inputs={ {k: (self._shape_str(s), getattr(d, 'name', d)) for k, (s, d) in self.inputs.items()} })")


class Bound:
    """One feed bound to an OrtSession with IO binding: inputs are copied to the device once, outputs
    are allocated there by ORT, so `run()` times the graph alone (no host-device copies), on CUDA as on
    the CPU provider. `outputs()` copies the last results back as ndarrays, in output order."""

    def __init__(self, sess: OrtSession, feed: Mapping[str, np.ndarray]):
        kind, index = parse_device(sess.device or "cpu")
        self._session = sess.session
        self._binding = self._session.io_binding()
        self._inputs = {}  # kept alive: the binding points at their device memory
        for name, arr in feed.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), kind, index)
            self._inputs[name] = value
            self._binding.bind_ortvalue_input(name, value)
        for name in sess.output_names:
            self._binding.bind_output(name, kind, index)
        self.device = f"{kind}:{index}" if kind == "cuda" else "cpu"

    def run(self) -> None:
        """Run the graph on the bound inputs; ORT waits for the device before returning."""
        self._session.run_with_iobinding(self._binding)

    def outputs(self) -> list[np.ndarray]:
        return self._binding.copy_outputs_to_cpu()
