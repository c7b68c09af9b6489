"""OpenVINO backends: the same ONNX graphs as ONNX Runtime's (RUN/onnx/*.onnx, fp32 and the QDQ int8
graph, which OpenVINO's low-precision transformations run as int8), on OpenVINO's CPU plugin.

The anchor a CPU deployer would pick instead of ONNX Runtime. An optional extra (`pip install
'.[openvino]'`), never a default dependency: without it `available()` says "not installed" and the
bench lists the backend under `skipped`. Like the ORT backends, this module never imports torch.

Settings, fixed and recorded in `form`: INFERENCE_NUM_THREADS = the bench's threads, one stream,
PERFORMANCE_HINT LATENCY, and INFERENCE_PRECISION_HINT f32 for fp32 and int8: on CPUs with bf16 units
(AMX, AVX512-BF16) OpenVINO would otherwise run an fp32 graph in bf16, which is not the graph the bench
says it times. That bf16 path is a backend of its own, openvino-bf16 (the fp32 graph, hint bf16), benched
only where the CPU computes bf16 natively (elsewhere OpenVINO falls back to f32 and the name would lie).
The model is compiled once with its dynamic batch dimension.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.bench.backend_base import INPUT_NAMES, Backend


class OpenVinoBackend(Backend):
    family = "openvino"
    library = "ort"    # harness.hardware's precision table: int8 native on any AVX2 CPU (u8s8 kernels, as ORT's)
    runs_onnx = True
    gpu = False
    name, precision = "openvino-?", "fp32"
    inference_precision = "f32"   # INFERENCE_PRECISION_HINT

    def __init__(self, opt_level: str = "all", io_binding: bool | None = None, spinning: bool = True):
        pass  # ORT's settings (the profile builds ORT-like backends alike); OpenVINO's threads are TBB's

    @classmethod
    def from_settings(cls, settings: dict) -> "OpenVinoBackend":
        return cls()

    @classmethod
    def available(cls, device) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False, "openvino not installed (an optional extra: pip install '.[openvino]')"
        return True, ""

    def load(self, job: dict, threads: int, device) -> None:
        import openvino as ov

        self.task = job["task"]
        self.path = Path(job["onnx"][self.onnx_key()]["path"])
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not found")
        self.config = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_PRECISION_HINT": self.inference_precision}
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__

    @property
    def form(self) -> dict:
        return {"graph": self.path.name, "runtime": f"OpenVINO {self.version} CPU plugin", "device": "cpu",
                "config": {k: str(v) for k, v in self.config.items()},
                # the precision hint as compiled; an int8 graph's quantized ops run in int8 whatever it says
                "inference_precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()}

    def _feed(self, inputs: dict) -> dict:
        return {k: np.ascontiguousarray(inputs[k]) for k in INPUT_NAMES[self.task]}

    def bind(self, inputs: dict):
        feed, request = self._feed(inputs), self.request
        return lambda: request.infer(feed)

    def __call__(self, inputs: dict) -> np.ndarray:
        self.request.infer(self._feed(inputs))
        return np.array(self.request.get_output_tensor(0).data)  # a copy: the request's buffer is reused

    def h2d_ms(self, inputs: dict) -> float | None:
        return None

    def prepare(self, batch_size: int):
        return None

    def model_file(self) -> Path:
        return self.path

    def close(self):
        self.request = self.compiled = None


class OpenVinoFP32(OpenVinoBackend):
    name, precision = "openvino-fp32", "fp32"


class OpenVinoInt8(OpenVinoBackend):
    name, precision = "openvino-int8", "int8"


class OpenVinoBF16(OpenVinoBackend):
    """The fp32 graph run in bf16 by OpenVINO's CPU plugin (its default on bf16 hardware)."""
    name, precision, graph = "openvino-bf16", "bf16", "fp32"
    inference_precision = "bf16"
    library = "onednn"   # bf16 is native where oneDNN's bf16 kernels are (AVX512-BF16, AMX): the CPU plugin's own

    @classmethod
    def available(cls, device) -> tuple[bool, str]:
        ok, why = super().available(device)
        if not ok:
            return ok, why
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return False, (f"OpenVINO's CPU plugin has no bf16 on this CPU (OPTIMIZATION_CAPABILITIES {', '.join(caps)}): "
                           "it would run the graph in f32")
        return True, ""
