"""Inference backends: one small class each behind one interface, joined by a registry.

A backend wraps one way of running a trained run's inference graph:

  segmentation  inputs {"image": [B,3,S,S] float32}                          -> logits [B,1,S,S]
  cvae          inputs {"image", "label", "new_label", "eps"} (label swap)   -> generated [B,C,H,W]

Interface (duck-typed; `Backend` is the base):
  name, precision                       class attributes ("fp32" | "bf16" | "int8")
  available() -> (bool, reason)         can this backend run on this machine at all?
  load(run_dir, cfg, threads)           build the session/model for one run (cfg: ExperimentConfig)
  prepare(batch_size) -> float | None   one-off work for a batch size (compile); returns its seconds
  __call__(inputs) -> np.ndarray        one inference, inputs: dict of np.ndarray or torch.Tensor
  model_file_size() -> int | None       bytes of the file(s) it runs (ONNX + external data, or safetensors)
  close()                               free what load() built

Nothing here imports onnxruntime or the exporter at module import time.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

INPUT_NAMES = {"segmentation": ("image",), "cvae": ("image", "label", "new_label", "eps")}
ONNX_FILES = {  # task -> precision -> file name inside RUN/onnx/ (written by exports.onnx_export)
    "segmentation": {"fp32": "model.onnx", "int8": "model.int8.onnx"},
    "cvae": {"fp32": "swap.onnx", "int8": "swap.int8.onnx"},
}
INDUCTOR_CACHE = Path.home() / ".cache" / "segvae" / "inductor"


def onnx_path(run_dir, task: str, precision: str) -> Path:
    return Path(run_dir) / "onnx" / ONNX_FILES[task][precision]


def files_size(path: Path) -> int | None:
    """Size of an ONNX file plus its external-data file(s) (`model.onnx.data` and the like)."""
    path = Path(path)
    if not path.is_file():
        return None
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


class Backend:
    name = "?"
    precision = "fp32"
    family = "torch"

    def __init__(self):
        self.run_dir: Path | None = None
        self.cfg = None
        self.threads: int | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, ""

    def load(self, run_dir, cfg, threads: int) -> None:
        raise NotImplementedError

    def prepare(self, batch_size: int) -> float | None:
        return None

    def __call__(self, inputs: dict) -> np.ndarray:
        raise NotImplementedError

    def model_file_size(self) -> int | None:
        return None

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- PyTorch
class TorchEager(Backend):
    name, precision = "torch-eager", "fp32"
    channels_last = False

    def load(self, run_dir, cfg, threads):
        import torch

        from harness.run_folder import WEIGHTS_FILE, load_run
        from models import LabelSwap

        torch.set_num_threads(threads)
        self.run_dir, self.threads = Path(run_dir), threads
        self.cfg, model = load_run(run_dir)
        self.weights = self.run_dir / WEIGHTS_FILE
        self.task = self.cfg.task
        self.net = (LabelSwap(model) if self.task == "cvae" else model).eval()
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.fn = self.net

    def _tensors(self, inputs: dict) -> list:
        import torch

        out = []
        for k in INPUT_NAMES[self.task]:
            v = inputs[k]
            t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            if self.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            out.append(t)
        return out

    def _run(self, args):
        return self.fn(*args)

    def __call__(self, inputs):
        import torch

        with torch.inference_mode():
            y = self._run(self._tensors(inputs))
            return y.float().contiguous().numpy()

    def model_file_size(self):
        return self.weights.stat().st_size if self.weights.is_file() else None

    def close(self):
        self.fn = self.net = None


class TorchChannelsLast(TorchEager):
    name, precision = "torch-channels-last", "fp32"
    channels_last = True


class TorchBF16(TorchEager):
    name, precision = "torch-bf16", "bf16"

    def _run(self, args):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.fn(*args)


class TorchCompile(TorchEager):
    """torch.compile (inductor, dynamic=False: one specialised graph per batch size).

    The inductor cache lives in TORCHINDUCTOR_CACHE_DIR (default ~/.cache/segvae/inductor), so a
    second bench of the same model is warm. prepare(b) makes the first call at batch b and returns
    its seconds (recorded as compile_s)."""

    name, precision = "torch-compile", "fp32"

    @classmethod
    def available(cls):
        import shutil

        if not any(shutil.which(c) for c in ("gcc", "cc", "clang", "g++")):
            return False, "no C compiler on PATH (inductor needs one on the CPU)"
        return True, ""

    def load(self, run_dir, cfg, threads):
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE))
        Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
        super().load(run_dir, cfg, threads)
        import torch

        self.fn = torch.compile(self.net, dynamic=False)
        self._compiled: dict[int, float] = {}

    def prepare(self, batch_size):
        if batch_size in self._compiled:
            return self._compiled[batch_size]
        inputs = example_inputs(self.cfg, batch_size)
        t0 = time.perf_counter()
        self(inputs)
        self._compiled[batch_size] = time.perf_counter() - t0
        return self._compiled[batch_size]


# --------------------------------------------------------------------------- ONNX Runtime
class OrtBackend(Backend):
    family = "ort"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    needs: str | None = None  # an execution provider that must be available

    def __init__(self, opt_level: str = "all"):
        super().__init__()
        self.opt_level = opt_level  # ORT graph optimization level (exports.session.OPT_LEVELS)

    @classmethod
    def available(cls):
        try:
            import onnxruntime as ort
        except ImportError as e:
            return False, f"onnxruntime not importable: {e}"
        try:
            from exports.session import OrtSession  # noqa: F401
        except ImportError as e:
            return False, f"exports.session not importable: {e}"
        if cls.needs and cls.needs not in ort.get_available_providers():
            return False, f"{cls.needs} not in onnxruntime.get_available_providers() {ort.get_available_providers()}"
        return True, ""

    def load(self, run_dir, cfg, threads):
        from exports.session import OrtSession

        from harness.run_folder import load_config
        from harness.errors import UserError

        self.run_dir, self.threads = Path(run_dir), threads
        self.cfg = cfg if cfg is not None else load_config(run_dir)
        self.task = self.cfg.task
        self.path = onnx_path(run_dir, self.task, self.precision)
        if not self.path.is_file():
            raise UserError(f"{self.path} not found (run `segvae export {run_dir}"
                            f"{' --quantize int8' if self.precision == 'int8' else ''}`)")
        self.sess = OrtSession(str(self.path), threads=threads, providers=list(self.providers),
                               graph_optimization=self.opt_level)
        self._checked: set = set()

    def __call__(self, inputs):
        feed = {}
        for k in INPUT_NAMES[self.task]:
            v = inputs[k]
            if not isinstance(v, np.ndarray):
                v = v.numpy()
            feed[k] = np.ascontiguousarray(v)
        key = tuple((k, v.shape, v.dtype.str) for k, v in feed.items())
        if key not in self._checked:  # OrtSession validates names/dtypes/shapes once per input signature
            self._checked.add(key)
            return np.asarray(self.sess(**feed))
        return np.asarray(self.sess.run_unchecked(feed)[0])

    def model_file_size(self):
        return files_size(self.path)

    def close(self):
        self.sess = None


class OrtFP32(OrtBackend):
    name, precision = "ort-fp32", "fp32"


class OrtInt8(OrtBackend):
    name, precision = "ort-int8", "int8"


class OrtCuda(OrtBackend):
    name, precision = "ort-cuda", "fp32"
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    needs = "CUDAExecutionProvider"


class OrtTensorRT(OrtBackend):
    name, precision = "ort-tensorrt", "fp32"
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    needs = "TensorrtExecutionProvider"


REGISTRY: dict[str, type[Backend]] = {c.name: c for c in (
    TorchEager, TorchChannelsLast, TorchBF16, TorchCompile, OrtFP32, OrtInt8, OrtCuda, OrtTensorRT)}


def get_backend(name: str) -> type[Backend]:
    from harness.errors import UserError

    if name not in REGISTRY:
        raise UserError(f"unknown backend {name!r}: expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def example_inputs(cfg, batch_size: int) -> dict[str, np.ndarray]:
    """Random inputs of the right shapes (used only to trigger compilation)."""
    rng = np.random.default_rng(0)
    if cfg.task == "segmentation":
        c = int(cfg.model.get("in_channels", 3))
        return {"image": rng.standard_normal((batch_size, c, cfg.image_size, cfg.image_size), dtype=np.float32)}
    m = cfg.model
    c, s, k = int(m.get("in_channels", 1)), int(m.get("image_size", 28)), int(m.get("num_classes", 10))
    return {
        "image": rng.random((batch_size, c, s, s), dtype=np.float32),
        "label": rng.integers(0, k, batch_size).astype(np.int64),
        "new_label": rng.integers(0, k, batch_size).astype(np.int64),
        "eps": rng.standard_normal((batch_size, int(m.get("latent_dim", 16))), dtype=np.float32),
    }
