"""Inference call of every backend available on the CPU (harness.bench.backends) on a tiny UNet and CVAE,
through the bench's own backend interface (available / load / prepare / __call__ / close)."""
from __future__ import annotations

import pytest
import torch

from exports.onnx_export import graph_specs
from harness.bench.backends import REGISTRY, example_inputs
from harness.bench.device import resolve_device
from harness.bench.trackers import flops_per_sample
from harness.run_folder import load_run, onnx_path

BATCH_SIZES = (1, 8)
CPU = resolve_device("cpu", cuda_available=False, cuda_count=0)


def _job(run, cfg) -> dict:
    onnx = {p: {"path": str(onnx_path(run, cfg.task, p))} for p in ("fp32", "int8", "fp16")}
    return {"task": cfg.task, "run_dir": str(run), "onnx": onnx}


@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=lambda b: f"bs{b}")
@pytest.mark.parametrize("backend_name", list(REGISTRY))
@pytest.mark.parametrize("model", ["unet", "cvae"])
def test_inference(benchmark, bench_runs, model, backend_name, batch_size):
    cls = REGISTRY[backend_name]
    ok, why = cls.available(CPU)
    if not ok:
        pytest.skip(why)
    run = bench_runs[model]
    cfg, net = load_run(run)
    threads = torch.get_num_threads()
    backend = cls()
    backend.load(_job(run, cfg), threads, CPU)
    try:
        compile_s = backend.prepare(batch_size)
        inputs = example_inputs(cfg, batch_size)
        out = backend(inputs)  # warm-up outside the timed rounds
        assert out.shape[0] == batch_size
        flops = flops_per_sample(graph_specs(cfg, net, fold_batchnorm=True)[0].module, cfg.task,
                                 example_inputs(cfg, 1))
        benchmark.group = f"{model}-bs{batch_size}"
        benchmark.extra_info.update({"backend": backend_name, "precision": cls.precision, "threads": threads,
                                     "batch_size": batch_size, "flops_per_sample": flops, "compile_s": compile_s,
                                     "model_file": str(backend.model_file())})
        benchmark.pedantic(backend, args=(inputs,), rounds=20, iterations=1, warmup_rounds=2)
        if benchmark.stats is not None:  # None with --benchmark-disable
            mean = benchmark.stats.stats.mean
            benchmark.extra_info["samples_per_s"] = batch_size / mean
            benchmark.extra_info["gflops_per_s"] = flops * batch_size / mean / 1e9
    finally:
        backend.close()
