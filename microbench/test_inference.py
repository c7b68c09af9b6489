"""Inference call of every available backend (harness.bench.backends) on a tiny UNet and CVAE."""
from __future__ import annotations

import pytest
import torch

from harness.bench.backends import REGISTRY, example_inputs
from harness.bench.runner import flops_per_sample
from harness.run_folder import load_run

BATCH_SIZES = (1, 8)


@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=lambda b: f"bs{b}")
@pytest.mark.parametrize("backend_name", list(REGISTRY))
@pytest.mark.parametrize("model", ["unet", "cvae"])
def test_inference(benchmark, bench_runs, model, backend_name, batch_size):
    cls = REGISTRY[backend_name]
    ok, why = cls.available()
    if not ok:
        pytest.skip(why)
    run = bench_runs[model]
    cfg, net = load_run(run)
    threads = torch.get_num_threads()
    backend = cls()
    backend.load(run, cfg, threads)
    try:
        compile_s = backend.prepare(batch_size)
        inputs = example_inputs(cfg, batch_size)
        out = backend(inputs)  # warm-up outside the timed rounds
        assert out.shape[0] == batch_size
        flops = flops_per_sample(cfg.task, net, inputs)
        benchmark.group = f"{model}-bs{batch_size}"
        benchmark.extra_info.update({"backend": backend_name, "precision": cls.precision, "threads": threads,
                                     "batch_size": batch_size, "flops_per_sample": flops, "compile_s": compile_s,
                                     "model_bytes": backend.model_file_size()})
        benchmark.pedantic(backend, args=(inputs,), rounds=20, iterations=1, warmup_rounds=2)
        if benchmark.stats is not None:  # None with --benchmark-disable
            mean = benchmark.stats.stats.mean
            benchmark.extra_info["samples_per_s"] = batch_size / mean
            benchmark.extra_info["gflops_per_s"] = flops * batch_size / mean / 1e9
    finally:
        backend.close()
