"""ONNX Runtime backends. This module never imports torch (directly or through harness/models):
ORT's peak memory is measured in a worker process that only loaded numpy and onnxruntime.

Sessions are the deployment path's own exports.session.OrtSession (intra-op threads, one inter-op
thread, sequential execution, spinning off, the chosen optimization level, the provider chain and
its device checks), which imports no torch.

GPU providers (CUDA, TensorRT) get device_id = the resolved GPU and IO binding (OrtSession.bind):
the inputs are uploaded once as OrtValues on the device and the outputs bound there, so a timed
query is run_with_iobinding alone (no host copies). The same path runs on the CPU provider with
io_binding=True (device 'cpu'), which is how it is tested without a GPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.bench.backend_base import INPUT_NAMES, Backend

def files_size(path) -> int | None:
    """Size of an ONNX file plus its external-data file(s) (`model.onnx.data` and the like)."""
    path = Path(path)
    if not path.is_file():
        return None
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


class OrtBackend(Backend):
    family = "ort"
    runs_onnx = True   # runs RUN/onnx/ graphs (the bench checks them, never exports); OpenVINO's backends too
    name, precision = "ort-?", "fp32"
    provider = "CPUExecutionProvider"
    gpu = False

    def __init__(self, opt_level: str = "all", io_binding: bool | None = None, spinning: bool = True):
        self.opt_level, self.spinning = opt_level, spinning
        self.io_binding = self.gpu if io_binding is None else io_binding

    @classmethod
    def available(cls, device) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as e:
            return False, f"onnxruntime not importable: {e}"
        have = ort.get_available_providers()
        if cls.provider not in have:
            return False, f"{cls.provider} not in onnxruntime.get_available_providers() {have}"
        if cls.gpu and device.kind != "cuda":
            return False, f"a GPU provider, and the bench device is {device}"
        return True, ""

    @classmethod
    def from_settings(cls, settings: dict) -> "OrtBackend":
        return cls(opt_level=settings["ort_opt_level"], spinning=settings.get("wait", "spin") == "spin")

    def load(self, job: dict, threads: int, device) -> None:
        from exports.session import OrtSession

        self.task, self.device = job["task"], device
        self.path = Path(job["onnx"][self.onnx_key()]["path"])
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not found")
        # the deployment path's own session (threads, provider chain, device checks); spinning as --wait says
        self.sess = OrtSession(self.path, threads, graph_optimization=self.opt_level, spinning=self.spinning,
                               device=f"cuda:{int(device.index or 0)}" if self.gpu else "cpu",
                               tensorrt=(self.provider == "TensorrtExecutionProvider") if self.gpu else False,
                               require_device=self.gpu)
        self._ort_device = ("cuda", int(device.index or 0)) if self.gpu else ("cpu", 0)

    @property
    def form(self) -> dict:
        return {"graph": self.path.name, "providers": self.sess.providers, "io_binding": self.io_binding,
                "device": str(self.device) if self.gpu else "cpu", "opt_level": self.opt_level,
                "spinning": self.spinning}

    @property
    def graph_rewrites(self) -> dict[str, str]:
        """The rewrites the exported graph carries in its metadata (ORT int8's UNet graph is made from
        a rewritten fp32 graph: ConvTranspose as 1x1 Conv + DepthToSpace)."""
        rewrites = self.sess.metadata.get("graph_rewrites")
        return dict(rewrites) if isinstance(rewrites, dict) else {}

    def _feed(self, inputs: dict) -> dict:
        return {k: np.ascontiguousarray(inputs[k]) for k in INPUT_NAMES[self.task]}

    def bind(self, inputs: dict):
        """A no-argument callable that runs one query on these inputs: with IO binding (GPU providers,
        or io_binding=True) the inputs are on the device once and outputs stay there."""
        feed = self._feed(inputs)
        if not self.io_binding:
            sess = self.sess
            return lambda: sess.run_unchecked(feed)
        bound = self.sess.bind(feed)

        def run():
            bound.run()
            return bound
        return run

    def __call__(self, inputs: dict) -> np.ndarray:
        feed = self._feed(inputs)
        if not self.io_binding:
            return np.asarray(self.sess.run_unchecked(feed)[0])
        bound = self.sess.bind(feed)
        bound.run()
        return np.asarray(bound.outputs()[0])

    def h2d_ms(self, inputs: dict) -> float | None:
        """Median of 5 uploads of these inputs as device OrtValues (GPU providers only)."""
        if not self.gpu:
            return None
        import statistics
        import time

        import onnxruntime as ort

        feed, times = self._feed(inputs), []
        for _ in range(6):
            t0 = time.perf_counter()
            for v in feed.values():
                ort.OrtValue.ortvalue_from_numpy(v, *self._ort_device)
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times[1:])

    def model_file(self) -> Path:
        return self.path

    def close(self):
        self.sess = None


class OrtFP32(OrtBackend):
    name, precision = "ort-fp32", "fp32"


class OrtInt8(OrtBackend):
    name, precision = "ort-int8", "int8"


class OrtCuda(OrtBackend):
    name, precision, provider, gpu = "ort-cuda", "fp32", "CUDAExecutionProvider", True


class OrtCudaFP16(OrtBackend):
    """The fp16 graph (inputs/outputs float32) on the CUDA provider: RUN/onnx/*.fp16.onnx when the
    export wrote one, else converted from the fp32 graph by exports.quantize.convert_fp16 into the
    bench's scratch folder (the record says which)."""
    name, precision, provider, gpu = "ort-cuda-fp16", "fp16", "CUDAExecutionProvider", True


class OrtTensorRT(OrtBackend):
    name, precision, provider, gpu = "ort-tensorrt", "fp32", "TensorrtExecutionProvider", True
