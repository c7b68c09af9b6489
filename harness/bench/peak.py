"""Matmul probe: what this machine's matrix units deliver at the bench's thread count, in at most
`budget_s` seconds (15 by default) on any machine.

- fp32: torch.matmul, and numpy's BLAS in a subprocess pinned to the same threads (OpenBLAS beat
  torch's matmul in the environment notes); the faster is the peak, since a low peak would make
  every backend look closer to the machine's limit than it is.
- bf16: torch.matmul on bf16 tensors, only where bf16 is native (harness.hardware).
- int8: torch._int_mm where PyTorch runs it natively (VNNI), and ONNX Runtime's MatMulInteger
  (u8 x s8 -> int32, the MLAS kernels its int8 graphs run, native on any AVX2 CPU); the faster
  is the peak.

An emulated precision is not timed (a 2048^3 bf16 product took 55.8 s on an AVX2-only EPYC):
its entry says "emulated" and why, and no "% of peak" is computed against it. Each product
grows from n=256 by doubling until one call takes >= 0.1 s or n reaches `max_n`; then the best
of up to `reps` calls within the precision's share of the budget. 2 n^3 operations per product
(the FLOP convention of flop_counter).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from harness.hardware import EMULATED, NATIVE, machine, precision_status

PRECISIONS = ("fp32", "bf16", "int8")
MIN_CALL_S = 0.1
START_N = 256

_NUMPY_PROBE = """
import sys, time, numpy as np
n, reps, budget = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
a @ b
times, t_end = [], time.perf_counter() + budget
for _ in range(reps):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
    if time.perf_counter() > t_end:
        break
print(min(times))
"""


def _numpy_fp32_seconds(threads: int, n: int, reps: int, budget_s: float) -> float:
    """Best seconds of a numpy float32 n x n matmul in a fresh process with `threads` BLAS threads."""
    env = {**os.environ, **{k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    out = subprocess.run([sys.executable, "-c", _NUMPY_PROBE, str(n), str(reps), str(budget_s)], env=env,
                         check=True, capture_output=True, text=True, timeout=max(10.0, 4 * budget_s))
    return float(out.stdout.strip().splitlines()[-1])


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sized_best(make, max_n: int, reps: int, budget_s: float) -> tuple[float, int]:
    """(best seconds, n): make(n) returns the call to time. n doubles from START_N until a call
    takes MIN_CALL_S or n reaches max_n; then up to `reps` timed calls, stopping at the budget."""
    t_end = time.perf_counter() + budget_s
    n = min(START_N, max_n)
    fn = make(n)
    fn()  # warm-up (allocations, kernel selection)
    t = _time_once(fn)
    while t < MIN_CALL_S and n * 2 <= max_n and time.perf_counter() + 8 * t < t_end:
        n *= 2
        fn = make(n)
        fn()
        t = _time_once(fn)
    best = t
    for _ in range(reps - 1):
        if time.perf_counter() + best > t_end:
            break
        best = min(best, _time_once(fn))
    return best, n


def _entry(seconds: float, n: int, method: str, note: str | None = None) -> dict:
    return {"gflops_per_s": 2.0 * n ** 3 / seconds / 1e9, "best_s": seconds, "n": n, "status": NATIVE,
            "method": method, "note": note}


def _skipped(method: str, status: str, note: str) -> dict:
    return {"gflops_per_s": None, "best_s": None, "n": None, "status": status, "method": method, "note": note}


def _ort_int8(threads: int, max_n: int, reps: int, budget_s: float) -> tuple[float, int]:
    """Best seconds of ONNX Runtime's MatMulInteger (uint8 x int8 -> int32) at the sized n."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["n", "k"]),
         helper.make_tensor_value_info("b", TensorProto.INT8, ["k", "m"])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["n", "m"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def make(n):
        feeds = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}
        return lambda: sess.run(None, feeds)
    return sized_best(make, max_n, reps, budget_s)


def probe_peak(threads: int | None = None, max_n: int = 2048, reps: int = 5, budget_s: float = 15.0,
               host=None) -> dict:
    """{"fp32", "bf16", "int8": {gflops_per_s (None when emulated or failed), best_s, n, status, method,
    note}, "threads", "max_n", "reps", "budget_s", "seconds"}. `host`: a harness.hardware.Machine
    (read now when None)."""
    import torch

    host = host or machine(with_gpu=False)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    share = budget_s / 4  # fp32 torch, fp32 numpy, bf16, int8: a quarter each at most
    out: dict = {"threads": torch.get_num_threads(), "max_n": max_n, "reps": reps, "budget_s": budget_s,
                 "machine": machine_key(host)}
    g = torch.Generator().manual_seed(0)

    def matmul(dtype):
        def make(n):
            a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
            return lambda: torch.matmul(a, b)
        return make

    try:
        t, n = sized_best(matmul(torch.float32), max_n, reps, share)
        out["fp32"] = _entry(t, n, "torch.matmul float32")
        try:
            t_np = _numpy_fp32_seconds(out["threads"], n, reps, share)
            torch_gf, np_gf = out["fp32"]["gflops_per_s"], 2.0 * n ** 3 / t_np / 1e9
            if t_np < t:
                out["fp32"].update(gflops_per_s=np_gf, best_s=t_np, method="numpy matmul float32 (BLAS)")
            out["fp32"]["note"] = f"torch.matmul {torch_gf:.0f} GFLOP/s, numpy {np_gf:.0f} GFLOP/s; the faster is the peak"
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            out["fp32"]["note"] = f"numpy probe failed ({type(e).__name__}); torch.matmul only"

        status, why = precision_status(host, "bf16", "torch")
        if status == EMULATED:
            out["bf16"] = _skipped("torch.matmul bfloat16", EMULATED, f"not timed: bf16 is emulated here ({why})")
        else:
            try:
                t, n = sized_best(matmul(torch.bfloat16), max_n, reps, share)
                out["bf16"] = _entry(t, n, "torch.matmul bfloat16")
            except Exception as e:  # pragma: no cover - dtype unsupported on this build
                out["bf16"] = _skipped("torch.matmul bfloat16", "failed", f"{type(e).__name__}: {e}")

        out["int8"] = _int8_peak(torch, g, host, out["threads"], max_n, reps, share)
    finally:
        torch.set_num_threads(old)
    out["seconds"] = time.perf_counter() - t_start
    return out


def machine_key(host) -> dict:
    """What must match for a stored probe to stand for this machine."""
    return {"cpu_model": host.cpu_model, "cpu_flags": host.cpu_flags, "torch_cpu_capability": host.torch_cpu_capability,
            "onednn_max_isa": host.onednn_max_isa,
            "statuses": {p: {k: v for k, v in e.items() if k != "why"} for p, e in host.precisions.items()}}


def reusable_peak(path, threads: int) -> dict | None:
    """The probe stored at `path` if it was measured on this machine at `threads` threads, else None."""
    import json

    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("threads") != threads:
        return None
    return doc if doc.get("machine") == machine_key(machine(with_gpu=False)) else None


def _int8_peak(torch, g, host, threads: int, max_n: int, reps: int, budget_s: float) -> dict:
    """The faster of torch._int_mm (only where PyTorch runs it natively) and ORT's MatMulInteger."""
    found, notes = [], []
    status, why = precision_status(host, "int8", "torch")
    if status == NATIVE:
        def make(n):
            a = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
            b = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
            return lambda: torch._int_mm(a, b)
        try:
            found.append((*sized_best(make, max_n, reps, budget_s / 2), "torch._int_mm int8xint8->int32"))
        except Exception as e:
            notes.append(f"torch._int_mm does not run on this build ({type(e).__name__})")
    else:
        notes.append(f"torch._int_mm not timed: emulated here ({why})")
    if precision_status(host, "int8", "ort")[0] == NATIVE:
        try:
            found.append((*_ort_int8(threads, max_n, reps, budget_s / 2), "onnxruntime MatMulInteger uint8xint8->int32"))
        except Exception as e:
            notes.append(f"ORT MatMulInteger failed ({type(e).__name__}: {e})")
    if not found:
        return _skipped("torch._int_mm / onnxruntime MatMulInteger", EMULATED, "; ".join(notes))
    t, n, method = min(found, key=lambda f: f[0] / f[1] ** 3)
    others = [f"{m}: {2.0 * k ** 3 / s / 1e9:.0f} GOP/s" for s, k, m in found if m != method]
    return _entry(t, n, method, "; ".join(["GOP/s of integer MACs x 2", *others, *notes]))
