"""`--device auto|cpu|cuda[:N]` resolution, a pure function so it is tested without a GPU.

auto: CUDA when torch.cuda.is_available(), on the GPU of this process's LOCAL_RANK under
`accelerate launch` (modulo the GPU count), else the CPU. An explicit `cuda` without an index
also takes the local rank's GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    kind: str            # "cpu" | "cuda"
    index: int | None    # GPU index for cuda, None for cpu

    @property
    def torch(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    def __str__(self) -> str:
        return self.torch


def resolve_device(spec: str | None, cuda_available: bool, cuda_count: int, local_rank: int = 0) -> Device:
    """Device for `spec` (None = auto). Raises ValueError naming the spec when it cannot be honoured."""
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return Device("cpu", None)
    if spec == "auto":
        if not cuda_available or cuda_count < 1:
            return Device("cpu", None)
        return Device("cuda", local_rank % cuda_count)
    if spec == "cuda" or spec.startswith("cuda:"):
        if not cuda_available or cuda_count < 1:
            raise ValueError(f"--device {spec}: torch.cuda.is_available() is False on this machine "
                             "(use --device cpu or auto)")
        if spec == "cuda":
            return Device("cuda", local_rank % cuda_count)
        idx = spec.split(":", 1)[1]
        if not idx.isdigit() or int(idx) >= cuda_count:
            raise ValueError(f"--device {spec}: expected cuda:N with 0 <= N < {cuda_count} (GPUs visible)")
        return Device("cuda", int(idx))
    raise ValueError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def detect_device(spec: str | None) -> Device:
    """resolve_device with this machine's torch.cuda state and LOCAL_RANK."""
    import torch

    avail = torch.cuda.is_available()
    return resolve_device(spec, avail, torch.cuda.device_count() if avail else 0,
                          int(os.environ.get("LOCAL_RANK", "0") or 0))
