"""Matmul probe: what this machine's matrix units deliver at the bench's thread count.

fp32 and bf16 use torch.matmul on n x n (default 2048) matrices, int8 uses torch._int_mm
(int8 x int8 -> int32, oneDNN/VNNI on x86) when it runs on this build. fp32 is also timed with
numpy's BLAS (OpenBLAS in the wheels, which beat torch's matmul in the environment notes) in a subprocess
pinned to the same thread count, and the faster of the two is the peak: a low peak would make every
backend look closer to the machine's limit than it is. Best of `reps` timed calls after one
warm-up; 2 n^3 operations per product (the FLOP convention of flop_counter).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

_NUMPY_PROBE = """
import sys, time, numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
a @ b
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
print(min(times))
"""


def _numpy_fp32_seconds(threads: int, n: int, reps: int) -> float:
    """Best seconds of a numpy float32 n x n matmul in a fresh process with `threads` BLAS threads."""
    env = {**os.environ, **{k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                        "MKL_NUM_THREADS")}}
    out = subprocess.run([sys.executable, "-c", _NUMPY_PROBE, str(n), str(reps)], env=env, check=True,
                         capture_output=True, text=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def probe_peak(threads: int | None = None, n: int = 2048, reps: int = 5) -> dict:
    """{"fp32": {...}, "bf16": {...}, "int8": {...}, "threads", "n", "reps"}; each precision has
    gflops_per_s (null when it cannot be measured), best_s, method and note."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    flops = 2.0 * n ** 3
    out: dict = {"threads": torch.get_num_threads(), "n": n, "reps": reps}
    try:
        g = torch.Generator().manual_seed(0)
        a32, b32 = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = a32.to(dtype), b32.to(dtype)
            try:
                t = _best(lambda: torch.matmul(a, b), reps)
                out[name] = {"gflops_per_s": flops / t / 1e9, "best_s": t,
                             "method": f"torch.matmul {dtype}", "note": None}
            except Exception as e:  # pragma: no cover - dtype unsupported on this build
                out[name] = {"gflops_per_s": None, "best_s": None, "method": f"torch.matmul {dtype}",
                             "note": f"failed: {type(e).__name__}: {e}"}
        try:
            t_np = _numpy_fp32_seconds(out["threads"], n, reps)
            torch_gf = out["fp32"]["gflops_per_s"]
            note = f"torch.matmul {torch_gf:.0f} GFLOP/s" if torch_gf else "torch.matmul failed"
            note += f", numpy {flops / t_np / 1e9:.0f} GFLOP/s; the faster is the peak"
            if out["fp32"]["best_s"] is None or t_np < out["fp32"]["best_s"]:
                out["fp32"].update(gflops_per_s=flops / t_np / 1e9, best_s=t_np, method="numpy matmul float32 (BLAS)")
            out["fp32"]["note"] = note
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            out["fp32"]["note"] = f"numpy probe failed ({type(e).__name__}); torch.matmul only"
        a8 = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
        b8 = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
        try:
            t = _best(lambda: torch._int_mm(a8, b8), reps)
            out["int8"] = {"gflops_per_s": flops / t / 1e9, "best_s": t,
                           "method": "torch._int_mm int8xint8->int32", "note": "GOP/s of integer MACs x 2"}
        except Exception as e:
            out["int8"] = {"gflops_per_s": None, "best_s": None, "method": "torch._int_mm int8xint8->int32",
                           "note": f"torch._int_mm does not run on this build: {type(e).__name__}: {e}"}
    finally:
        torch.set_num_threads(old)
    return out
