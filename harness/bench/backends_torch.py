"""PyTorch inference backends: eager (fp32, channels_last, bf16/fp16 weights) and torch.compile.

They run the graph in the form it is exported in (exports.onnx_export.graph_specs:
BatchNorm folded), so they and ONNX Runtime compute the same function. Nothing here imports
torch or onnxruntime at module import time (ORT workers must never import torch).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.bench.backend_base import INPUT_NAMES, Backend
from harness.run_folder import WEIGHTS_FILE, load_run

__all__ = ["TorchEager", "TorchChannelsLast", "TorchBF16", "TorchFP16", "TorchCompile", "example_inputs"]


class TorchEager(Backend):
    name, precision, family = "torch-eager", "fp32", "torch"
    channels_last = False
    dtype_name: str | None = None   # weights converted once to this dtype (bf16/fp16)
    graph_options: dict = {}        # extra exports.onnx_export.graph_specs rewrites (e.g. pixel_shuffle_up)

    def load(self, job: dict, threads: int, device) -> None:
        import torch

        from exports.onnx_export import graph_specs

        torch.set_num_threads(threads)
        self.device, self.task = device, job["task"]
        self.cfg, model = load_run(job["run_dir"])
        self.weights = Path(job["run_dir"]) / WEIGHTS_FILE
        spec = graph_specs(self.cfg, model, fold_batchnorm=True, **self.graph_options)[0]
        self.rewrites = list(spec.rewrites)
        net = self._transform(spec.module.eval(), job).to(device.torch)
        self.dtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[self.dtype_name]) \
            if self.dtype_name else None
        if self.dtype is not None:
            net = net.to(self.dtype)   # once: the timed calls run on converted weights
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = self.fn = net

    def _transform(self, net, job: dict):
        """The module as this backend runs it (torch int8 quantizes it here); eager: unchanged."""
        return net

    @property
    def graph_rewrites(self) -> dict[str, str]:
        """Function-preserving rewrites of the exported graph form this backend runs (name -> what)."""
        from exports.onnx_export import REWRITES
        return {k: REWRITES[k] for k in self.rewrites}

    @property
    def form(self) -> dict:
        import torch

        f = {"graph": "graph_specs(fold_batchnorm=True) module" + (f" ({', '.join(self.rewrites)})" if self.rewrites else ""),
             "weights": f"converted once to {self.dtype_name}; float inputs cast per call" if self.dtype_name
             else "fp32", "channels_last": self.channels_last, "device": str(self.device)}
        if self.device.kind == "cuda":
            f["tf32"] = {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                         "cudnn": bool(torch.backends.cudnn.allow_tf32)}
        return f

    def _tensors(self, inputs: dict, device: str | None = None) -> list:
        import torch

        out = []
        for k in INPUT_NAMES[self.task]:
            v = inputs[k]
            t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            t = t.to(device or self.device.torch)
            if self.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            out.append(t)
        return out

    def _forward(self, args):
        import torch

        if self.dtype is not None:
            args = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        with torch.inference_mode():
            return self.fn(*args)

    def _sync(self):
        if self.device.kind == "cuda":
            import torch
            torch.cuda.synchronize(self.device.index)

    def bind(self, inputs: dict):
        args = self._tensors(inputs)
        self._sync()

        def run():
            self._forward(args)
            self._sync()
        return run

    def __call__(self, inputs: dict) -> np.ndarray:
        y = self._forward(self._tensors(inputs))
        return y.float().cpu().contiguous().numpy()

    def h2d_ms(self, inputs: dict) -> float | None:
        """Median of 5 host-to-device copies of these inputs (GPU only; not in the timed loop)."""
        if self.device.kind != "cuda":
            return None
        times = []
        for _ in range(6):
            t0 = time.perf_counter()
            self._tensors(inputs)
            self._sync()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times[1:])

    def model_file(self) -> Path | None:
        return self.weights if self.weights.is_file() else None

    def close(self):
        self.fn = self.net = None


class TorchChannelsLast(TorchEager):
    name, precision = "torch-channels-last", "fp32"
    channels_last = True


class TorchBF16(TorchEager):
    """bf16 weights, channels_last activations: oneDNN's bf16 convolutions run in NHWC (in NCHW it
    reorders around each one). The 32-channel UNet at batch 8 on an AVX512-BF16 EPYC: 138 samples/s
    against 94 in NCHW (docs/results/share-of-peak-avx512/torch-layouts-unet32.json). Tensor cores
    want NHWC too."""
    name, precision, dtype_name = "torch-bf16", "bf16", "bf16"
    channels_last = True


class TorchFP16(TorchEager):
    name, precision, dtype_name = "torch-fp16", "fp16", "fp16"

    @classmethod
    def available(cls, device):
        if device.kind != "cuda":
            return False, "fp16 weights are a GPU form (no fast fp16 kernels on this CPU); run with --device cuda"
        return True, ""


class TorchCompile(TorchEager):
    """torch.compile (inductor, dynamic=False: one graph per batch size). prepare(b) compiles COLD
    (an empty TORCHINDUCTOR_CACHE_DIR) and then WARM (torch._dynamo.reset() and the same call again,
    the inductor cache now filled); both first-call seconds are returned.

    Compiled with inductor freezing (weights folded in as constants, oneDNN weights prepacked). No
    channels_last variant: with oneDNN on the CPU inductor already runs every conv graph channels_last
    (torch/_inductor/graph.py decide_layout_opt), so a channels_last input would change only the copy
    at the graph's entry.

    job["compile_cache"] (the bench's worker sets it per run and rank) is kept across the backend's
    fresh worker processes (--processes): the first compiles cold, the later ones load the filled
    cache (one warm compile, labelled so), which keeps a respawn from costing a cold compile each."""

    name, precision = "torch-compile", "fp32"

    @classmethod
    def available(cls, device):
        import shutil

        if device.kind == "cpu" and not any(shutil.which(c) for c in ("gcc", "cc", "clang", "g++")):
            return False, "no C compiler on PATH (inductor needs one on the CPU)"
        return True, ""

    def load(self, job, threads, device):
        import torch

        torch._dynamo.reset()  # nothing compiled for an earlier run carries over
        given = job.get("compile_cache")
        self._owned = not given
        self._cache = given or tempfile.mkdtemp(prefix="segvae-inductor-")
        self._inherited = bool(given) and Path(given).is_dir() and any(Path(given).iterdir())
        Path(self._cache).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = self._cache  # empty unless inherited: the first compile is cold
        super().load(job, threads, device)
        self._compiled: dict[int, dict] = {}
        self._compile()

    def _compile(self):
        import torch
        import torch._inductor.config as inductor_config

        # freezing: weights become constants, so inductor folds them into its kernels (and prepacks
        # oneDNN weights); valid because the timed calls run under inference_mode on fixed weights
        inductor_config.freezing = True
        self.fn = torch.compile(self.net, dynamic=False)

    @property
    def form(self) -> dict:
        return {**super().form, "compile": "torch.compile(dynamic=False), inductor freezing=True"}

    def _first_call(self, batch_size: int) -> float:
        x = example_inputs(self.cfg, batch_size)
        t0 = time.perf_counter()
        self(x)
        self._sync()
        return time.perf_counter() - t0

    def prepare(self, batch_size):
        if batch_size not in self._compiled and self._inherited:
            self._compiled[batch_size] = {"warm": self._first_call(batch_size),
                                          "note": "warm: a fresh worker process, the cache filled by the "
                                                  "backend's first process"}
        if batch_size not in self._compiled:
            import torch

            cold = self._first_call(batch_size)
            torch._dynamo.reset()
            self._compile()
            for b in self._compiled:  # the reset dropped earlier graphs: rebuild them from the cache
                self._first_call(b)
            warm = self._first_call(batch_size)
            before = sorted(b for b in self._compiled)
            cold_note = ("cold: empty TORCHINDUCTOR_CACHE_DIR" if not before else
                         f"cold for this batch size's graph (the on-disk cache held batch sizes {before} only)")
            self._compiled[batch_size] = {"cold": cold, "warm": warm,
                                          "note": f"{cold_note}; warm: after torch._dynamo.reset() with the "
                                                  "cache filled (same worker process)"}
        return self._compiled[batch_size]

    def close(self):
        super().close()
        if getattr(self, "_owned", False):  # a given cache outlives this process (the bench removes its folder)
            import shutil
            shutil.rmtree(self._cache, ignore_errors=True)


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
