"""Matmul probe: what this machine's matrix units deliver at the bench's thread count, in at most
`budget_s` seconds (15 by default) on any machine.

- fp32: torch.matmul, numpy's BLAS in a subprocess pinned to the same threads, and ONNX Runtime's
  MatMul (MLAS); the fastest is the peak, since a low peak would make every backend look closer to
  the machine's limit than it is (on an AVX2-only EPYC, ORT fp32 read 122% of a torch/numpy peak).
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
    """(seconds, n) of the fastest call per n^3 seen: make(n) returns the call to time. n doubles from
    START_N until a call takes MIN_CALL_S or n reaches max_n (each size timed once after a warm-up);
    then up to `reps` more calls at the last size, stopping at the budget. The best rate over all
    sizes is the peak: a size that fits the caches can beat the largest one."""
    t_end = time.perf_counter() + budget_s
    n = min(START_N, max_n)
    fn = make(n)
    fn()  # warm-up (allocations, kernel selection)
    t = _time_once(fn)
    best = (t, n)
    while t < MIN_CALL_S and n * 2 <= max_n and time.perf_counter() + 8 * t < t_end:
        n *= 2
        fn = make(n)
        fn()
        t = _time_once(fn)
        best = min(best, (t, n), key=lambda b: b[0] / b[1] ** 3)
    for _ in range(reps - 1):
        if time.perf_counter() + t > t_end:
            break
        best = min(best, (_time_once(fn), n), key=lambda b: b[0] / b[1] ** 3)
    return best


def _entry(seconds: float, n: int, method: str, note: str | None = None) -> dict:
    return {"gflops_per_s": 2.0 * n ** 3 / seconds / 1e9, "best_s": seconds, "n": n, "status": NATIVE,
            "method": method, "note": note}


def _skipped(method: str, status: str, note: str) -> dict:
    return {"gflops_per_s": None, "best_s": None, "n": None, "status": status, "method": method, "note": note}


def _ort_matmul(op: str, a_type: int, b_type: int, y_type: int, make_feeds, threads: int, max_n: int, reps: int,
                budget_s: float) -> tuple[float, int]:
    """Best seconds of one ONNX Runtime matmul node (MLAS, the kernels its graphs run) at the sized n."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])], "peak",
        [helper.make_tensor_value_info("a", a_type, ["n", "k"]), helper.make_tensor_value_info("b", b_type, ["k", "m"])],
        [helper.make_tensor_value_info("y", y_type, ["n", "m"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def make(n):
        feeds = make_feeds(n)
        return lambda: sess.run(None, feeds)
    return sized_best(make, max_n, reps, budget_s)


def _ort_fp32(threads: int, max_n: int, reps: int, budget_s: float) -> tuple[float, int]:
    import numpy as np
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    return _ort_matmul("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT,
                       lambda n: {"a": rng.standard_normal((n, n), dtype=np.float32),
                                  "b": rng.standard_normal((n, n), dtype=np.float32)}, threads, max_n, reps, budget_s)


def _ort_int8(threads: int, max_n: int, reps: int, budget_s: float) -> tuple[float, int]:
    import numpy as np
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    return _ort_matmul("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32,
                       lambda n: {"a": rng.integers(0, 256, (n, n), dtype=np.uint8),
                                  "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}, threads, max_n, reps, budget_s)


def _fastest(found: list[tuple[float, int, str]], notes: list[str], unit: str) -> dict:
    """The entry of the fastest (seconds, n, method) candidate; the others' rates in its note."""
    t, n, method = min(found, key=lambda f: f[0] / f[1] ** 3)
    rates = [f"{m}: {2.0 * k ** 3 / sec / 1e9:.0f} {unit}" for sec, k, m in found]
    return _entry(t, n, method, "; ".join([*rates, "the fastest is the peak", *notes]))


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
    share = budget_s / 5  # fp32: torch, numpy, ORT; bf16; int8 (torch._int_mm and ORT): a fifth each at most
    out: dict = {"threads": torch.get_num_threads(), "max_n": max_n, "reps": reps, "budget_s": budget_s,
                 "machine": machine_key(host)}
    g = torch.Generator().manual_seed(0)

    def matmul(dtype):
        def make(n):
            a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
            return lambda: torch.matmul(a, b)
        return make

    try:
        found, notes = [(*sized_best(matmul(torch.float32), max_n, reps, share), "torch.matmul float32")], []
        try:
            n = found[0][1]
            found.append((_numpy_fp32_seconds(out["threads"], n, reps, share), n, "numpy matmul float32 (BLAS)"))
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            notes.append(f"numpy probe failed ({type(e).__name__})")
        try:
            found.append((*_ort_fp32(out["threads"], max_n, reps, share), "onnxruntime MatMul float32 (MLAS)"))
        except Exception as e:
            notes.append(f"ORT MatMul failed ({type(e).__name__}: {e})")
        out["fp32"] = _fastest(found, notes, "GFLOP/s")

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
    return _fastest(found, ["GOP/s of integer MACs x 2", *notes], "GOP/s")
