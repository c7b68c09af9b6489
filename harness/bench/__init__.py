"""Benchmarks of trained runs: PyTorch backends vs ONNX Runtime, speed + accuracy in one bench.json.

    from harness.bench import BenchConfig, run_bench
    doc = run_bench(["runs/unet-mp-tr-bce"], BenchConfig(backends=["torch-eager", "ort-fp32"]))

Pieces: backends.py (REGISTRY of backends), scenarios.py (single-stream/offline/server),
peak.py (matmul probe), runner.py (BenchConfig, run_bench). Schema: schema.md.
"""
from harness.bench.backends import REGISTRY as BACKENDS
from harness.bench.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench", "BACKENDS"]
