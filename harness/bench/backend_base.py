"""What a bench backend is: the `Backend` base class every backend subclasses (backends.py for
PyTorch, backends_ort.py for ONNX Runtime) and the REGISTRY in backends.py names.

A backend wraps one way of running a trained run's inference graph:

  segmentation  inputs {"image": [B,3,S,S] float32}                          -> logits [B,1,S,S]
  cvae          inputs {"image", "label", "new_label", "eps"} (label swap)   -> generated [B,C,H,W]

The worker (worker.py) calls, in order: `from_settings`, `load`, `prepare` per batch size, then
`bind` + the returned run() for timing and `__call__` for accuracy, and `close`. Nothing here
imports torch or onnxruntime: an ORT worker process must never import torch.
"""
from __future__ import annotations

from pathlib import Path

INPUT_NAMES = {"segmentation": ("image",), "cvae": ("image", "label", "new_label", "eps")}


class Backend:
    name: str = "?"            # the registry key, e.g. "torch-eager"
    precision: str = "fp32"    # fp32 | bf16 | fp16 | int8: the peak probe, and the ONNX file it reads
    graph: str | None = None   # the ONNX file's precision when not `precision` (OpenVINO bf16 runs the fp32 graph)
    family: str = "?"          # "torch" (runs RUN/model.safetensors) or "ort" (runs RUN/onnx/<precision>)
    gpu: bool = False          # computes on a GPU only (its figures are never compared with a CPU peak)
    runs_onnx: bool = False    # runs RUN/onnx/<precision> (ORT's and OpenVINO's backends): the bench checks them
    library: str | None = None  # harness.hardware's library for native-vs-emulated (None: `family`)

    @classmethod
    def onnx_key(cls) -> str:
        """The key of the run's ONNX file this backend reads (RUN/onnx/<key>), for `runs_onnx` backends."""
        return cls.graph or cls.precision

    @classmethod
    def available(cls, device) -> tuple[bool, str]:
        """(can this backend run on this device at all, why not)."""
        return True, ""

    @classmethod
    def from_settings(cls, settings: dict) -> "Backend":
        """A fresh backend from the worker's settings (threads, ort_opt_level, wait, ...)."""
        return cls()

    def load(self, job: dict, threads: int, device) -> None:
        """Build the model or session for one run (job: the runner's per-run dict)."""
        raise NotImplementedError

    def prepare(self, batch_size: int) -> dict | None:
        """One-off work for a batch size (compile: cold/warm seconds), or None."""
        return None

    def bind(self, inputs: dict):
        """Place the inputs where the backend computes ONCE; return run(): one timed query (it
        synchronizes on a GPU)."""
        raise NotImplementedError

    def __call__(self, inputs: dict):
        """One inference with host copies, as a numpy array (the accuracy pass)."""
        raise NotImplementedError

    def h2d_ms(self, inputs: dict) -> float | None:
        """Host-to-device copy of these inputs in ms, timed apart (GPU backends), else None."""
        return None

    @property
    def form(self) -> dict:
        """What exactly is timed (graph form, weights, TF32, IO binding), recorded per record."""
        raise NotImplementedError

    @property
    def graph_rewrites(self) -> dict[str, str]:
        """name -> what: the function-preserving rewrites (exports.onnx_export.REWRITES) of the graph it runs."""
        return {}

    def model_file(self) -> Path | None:
        """The file it runs (for its size and sha256)."""
        return None

    def close(self) -> None:
        """Drop the model or session (the worker may load the next run)."""
