"""The REGISTRY of every inference backend: one class per way of running a run's graph, one file per
family (the interface is `harness.bench.backend_base.Backend`). A new backend is one new file with a
Backend subclass, added to REGISTRY here. Nothing here imports torch or onnxruntime at module
import time (ORT workers must never import torch).
"""
from __future__ import annotations

from harness.bench.backend_base import Backend
from harness.bench.backends_openvino import OpenVinoBF16, OpenVinoFP32, OpenVinoInt8
from harness.bench.backends_ort import OrtCuda, OrtCudaFP16, OrtFP32, OrtInt8, OrtTensorRT
from harness.bench.backends_torch import (TorchBF16, TorchChannelsLast, TorchCompile, TorchEager, TorchFP16,
                                          example_inputs)
from harness.bench.backends_torch_int8 import TorchInt8

__all__ = ["REGISTRY", "example_inputs", "TorchEager", "TorchCompile", "TorchInt8"]

REGISTRY: dict[str, type[Backend]] = {c.name: c for c in (
    TorchEager, TorchChannelsLast, TorchBF16, TorchFP16, TorchCompile, TorchInt8,
    OrtFP32, OrtInt8, OrtCuda, OrtCudaFP16, OrtTensorRT, OpenVinoFP32, OpenVinoBF16, OpenVinoInt8)}
