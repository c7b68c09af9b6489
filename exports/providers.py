"""Which ONNX Runtime execution providers run a graph on a device ("cpu" or "cuda:N").

GPUs need the onnxruntime-gpu wheel (the `gpu` extra of pyproject.toml). Both it and the CPU wheel
install the same `onnxruntime` module, so swap them, in this order:

    pip install -e ".[gpu]"                       # adds onnxruntime-gpu
    pip uninstall -y onnxruntime                  # removes the CPU wheel (and files both share)
    pip install --force-reinstall --no-deps "onnxruntime-gpu[cuda,cudnn]"   # restores them

`providers_for("cuda:1")` -> [TensorRT (when its libraries load), CUDA with device_id=1, CPU] and,
when CUDA cannot be used, [CPU] with a note that names what is missing (the CPU fallback is never
silent: `OrtSession.fallback` carries the note, and `require_device=True` makes it an error).
Only onnxruntime and the standard library are imported (deployment machines may lack torch).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import re

import onnxruntime as ort

from models.errors import UserError

__all__ = ["parse_device", "providers_for", "tensorrt_problem", "GPU_INSTALL_HINT"]

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_INSTALL_HINT = ('pip install -e ".[gpu]" && pip uninstall -y onnxruntime && '
                    'pip install --force-reinstall --no-deps "onnxruntime-gpu[cuda,cudnn]"')


def parse_device(device: str) -> tuple[str, int]:
    """"cpu" -> ("cpu", 0); "cuda" -> ("cuda", 0); "cuda:N" -> ("cuda", N). Anything else: UserError."""
    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", str(device).strip().lower())
    if not m or (m.group(1) == "cpu" and m.group(2) not in (None, "0")):
        raise UserError(f"invalid device {device!r}: expected 'cpu', 'cuda' or 'cuda:N' (N = GPU index)")
    return m.group(1), int(m.group(2) or 0)


def _tensorrt_lib_dirs() -> list[str]:
    """Folders of pip's TensorRT wheels (tensorrt_libs, tensorrt_cu12_libs, tensorrt_cu13_libs, ...)."""
    dirs = []
    for name in ("tensorrt_libs", "tensorrt_cu13_libs", "tensorrt_cu12_libs"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs += list(spec.submodule_search_locations)
    return dirs


def tensorrt_problem() -> str | None:
    """None when TensorRT's runtime library (libnvinfer) loads, else what is missing.

    pip's TensorRT wheels are not on the loader's path: their libnvinfer is loaded here, globally,
    so that ORT's TensorRT provider finds it."""
    candidates = [p for d in _tensorrt_lib_dirs() for p in sorted(glob.glob(os.path.join(d, "libnvinfer.so*")))]
    found = ctypes.util.find_library("nvinfer")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return None
        except OSError:
            continue
    return "TensorRT's libnvinfer is not installed or does not load (pip install tensorrt)"


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu >= 1.21 can load CUDA and cuDNN from the nvidia-* wheels (as torch's CUDA build
    installs them); older builds need them on the loader's path."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # a failed preload shows up as the CUDA provider not loading: reported then
            pass


def providers_for(device: str | None, tensorrt: bool | None = None) -> tuple[list, str | None]:
    """(providers for ort.InferenceSession, fallback note or None) for a device.

    device None: every compute provider this build offers, CPU last (the old default, no options).
    "cuda:N": TensorRT first when `tensorrt` is True or None (auto) and libnvinfer loads, then CUDA,
    both with device_id=N, then CPU for any op they lack. tensorrt=False: CUDA and CPU only.
    When CUDA is unavailable: [CPU] and a note naming what is missing.
    """
    available = ort.get_available_providers()
    if device is None:
        compute = [p for p in available if p not in (CPU, "AzureExecutionProvider")]
        return compute + [CPU], None
    kind, index = parse_device(device)
    if kind == "cpu":
        return [CPU], None
    if CUDA not in available:
        return [CPU], (f"{device} asked, but this onnxruntime {ort.__version__} offers {', '.join(available)} "
                       f"only: the onnxruntime-gpu wheel is not installed ({GPU_INSTALL_HINT})")
    _preload_cuda_libraries()
    providers: list = []
    note = None
    if tensorrt is not False:
        problem = tensorrt_problem() if TRT in available else f"this onnxruntime build has no {TRT}"
        if problem is None:
            providers.append((TRT, {"device_id": index}))
        elif tensorrt:
            note = f"TensorRT asked for {device} but not used: {problem}"
    providers += [(CUDA, {"device_id": index}), CPU]
    return providers, note


def provider_names(providers: list) -> list[str]:
    return [p[0] if isinstance(p, tuple) else p for p in providers]
