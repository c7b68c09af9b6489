"""Benchmarks of trained runs: PyTorch backends vs ONNX Runtime, speed + accuracy in one bench.json.

    from harness.bench import BenchConfig, run_bench
    doc = run_bench(["runs/unet-mp-tr-bce"], BenchConfig(backends=["torch-eager", "ort-fp32"]))

Pieces: config.py (BenchConfig), backend_base.py (the Backend interface), backends.py (PyTorch
backends and the REGISTRY) and backends_ort.py, scenario_base.py (the Scenario interface),
scenarios.py (single-stream/offline/server, rate search, the SCENARIOS registry), stats.py
(estimators), launchers.py (worker processes, interleaving, ranks), worker.py (the measuring side),
trackers.py (memory, FLOPs, provenance), accuracy.py (inputs, figures, gate), records.py +
assemble.py (the record schema, schema.md), peak.py (matmul probe), runner.py (run_bench).
Imports are lazy: a worker process that runs ONNX Runtime imports `harness.bench` without
pulling torch in.
"""

__all__ = ["BenchConfig", "run_bench"]


def __getattr__(name):
    if name == "BenchConfig":
        from harness.bench.config import BenchConfig
        return BenchConfig
    if name == "run_bench":
        from harness.bench.runner import run_bench
        return run_bench
    raise AttributeError(f"module 'harness.bench' has no attribute {name!r}")
