"""Process-wide settings of the timed workers: OpenMP's wait policy (every worker alike) and glibc
malloc's retention of freed memory (PyTorch workers). Both are recorded in bench.json's config."""
from __future__ import annotations

import os
import sys

OMP_WAIT_POLICY = "PASSIVE"
OMP_DEFAULT = "unset (libgomp's default: spin about 300,000 iterations, then sleep)"
# glibc malloc in torch workers: keep freed memory instead of returning it to the OS. PyTorch's CPU
# allocator is plain malloc, and each eager forward's large activations (> the mmap threshold) were
# mmapped and unmapped per call: page faults on every batch. On the 2-vCPU dev VM that made torch eager
# at batch 8 17% slower and noisier between rounds (sd 5.4% -> 3.4%) than with these settings; its peak
# RSS did not grow (817 MB against 841 before, 32-channel UNet). ONNX Runtime keeps its own arena and
# gets nothing from it. mallopt(3) parameter numbers and values (bytes):
MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": (-3, 32 << 20),   # glibc's maximum: blocks below 32 MiB come from the heap
                   "M_TRIM_THRESHOLD": (-1, 1 << 30),    # never trim the heap top below 1 GiB free
                   "M_TOP_PAD": (-2, 256 << 20)}         # grow the heap in 256 MiB steps
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
ORT_MALLOC = {"source": "not set (ORT's arena)"}
# With spinning threads (--wait spin), a session that just ran keeps its threads spinning for tens of
# ms, on the cores the next backend is about to time: on the 2-vCPU EPYC the MNIST CVAE's ORT fp32
# session at batch 8 ran 3.1 ms alone, 3.9-7.2 ms right after another session, 7.1-7.9 after a 5 ms
# pause, 3.0-3.1 after 50 ms and after 0.25 s (docs/results/per-layer-epyc/profile-overhead-*.json).
# So the bench waits this long before a turn that follows an ORT backend's (runner.settle_s), and
# `segvae profile` before each block of its two ORT sessions.
SPIN_SETTLE_S = 0.25


def retain_freed_memory() -> dict:
    """Apply MALLOC_SETTINGS to this process with mallopt (glibc only) unless the environment sets
    malloc itself; returns what holds, for bench.json's config."""
    given = {k: os.environ[k] for k in MALLOC_ENV if k in os.environ}
    if given:
        return {"source": "environment", **given}
    if not sys.platform.startswith("linux"):
        return {"source": "platform default (not glibc)"}
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {"source": "platform default (no mallopt)"}
    applied = {k: v for k, (param, v) in MALLOC_SETTINGS.items() if mallopt(param, v) == 1}
    return {"source": "mallopt", **applied}


def omp_env(wait: str) -> dict:
    """OMP_WAIT_POLICY for a timed process: PASSIVE under wait="passive", else libgomp's default;
    a policy the user's environment sets is kept either way."""
    if "OMP_WAIT_POLICY" in os.environ:
        return {"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}
    return {"OMP_WAIT_POLICY": OMP_WAIT_POLICY} if wait == "passive" else {}


def configure_omp(wait: str) -> str:
    """Set this process's OpenMP wait policy (before torch is imported) and return it as recorded.

    wait="spin" (the bench's default) times each library as it ships: libgomp spins briefly, ONNX
    Runtime's threads spin. Passive waiting (OMP PASSIVE, ORT spinning off) suits a machine that
    other processes share (with active waiting, 2 threads on 2 busy cores made a small UNet ~100x
    slower on the dev machine), but it penalises eager PyTorch's many short parallel regions: on
    the dev VM the 32-channel UNet at batch 1 ran 25-29 img/s spinning against 19-22 passive."""
    policy = omp_env(wait)
    if "torch" not in sys.modules:
        os.environ.update(policy)
    return policy.get("OMP_WAIT_POLICY", OMP_DEFAULT)  # what every worker process gets
